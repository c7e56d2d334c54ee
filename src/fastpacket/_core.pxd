# The C++ core (csrc/fastpacket/*.hpp) as the Cython bindings see it: one
# block per header, only the symbols the .pxi files use (aiohttp's
# _cparser.pxd habit). C++ names are kept; a class whose name the extension
# type wrapping it takes is declared as Cpp<Name> (see _native.pxd).
from libc.stdint cimport int8_t, int16_t, int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stddef cimport ptrdiff_t
# C++ bool under its own name: a plain `bool` would shadow Python's bool in
# every module that cimports this one with *.
from libcpp cimport bool as cpp_bool


cdef extern from "fastpacket/layout.hpp" namespace "fastpacket" nogil:
    const size_t kMaxHeaderBytes
    const uint64_t kAggregateType

    cdef struct Field:
        uint16_t offset
        uint8_t width

    cdef cppclass Layout:
        Field fields[64]
        uint16_t nfields
        uint16_t header_size
        cpp_bool big_endian
        int length_index
        cpp_bool length_includes_header
        int64_t length_adjustment
        int type_index
        int seq_index
        int player_id_index
        cpp_bool valid()
        uint64_t read(const uint8_t* header, int index)
        void write(uint8_t* header, int index, uint64_t value)
        uint64_t field_max(int index)
        int64_t frame_size(const uint8_t* header)


cdef extern from "fastpacket/framing.hpp" namespace "fastpacket" nogil:
    const size_t kDefaultMaxPacketSize
    const size_t kMaxPacketSizeLimit
    cpp_bool frame_size_ok(int64_t frame, size_t header_size, int64_t max_size)

    cdef enum class FrameError(uint8_t):
        none
        too_small
        too_large
        failed

    cdef struct ErrorInfo:
        FrameError kind
        uint64_t stream_offset
        int64_t frame_size
        uint64_t length_value

    cdef struct IndexColumns:
        int64_t* offsets
        uint32_t* sizes
        uint8_t* headers

    cdef struct HeaderValues:
        uint64_t type
        uint64_t seq
        uint64_t player_id

    cdef enum class EncodeError(uint8_t):
        none
        too_large
        no_type_field
        type_range
        seq_range
        player_id_range

    size_t index_bytes(size_t count, size_t header_size)
    IndexColumns index_view(void* block, size_t count, size_t header_size)
    void index_frames(const Layout& l, const uint8_t* data, size_t count, int64_t base_offset,
                      IndexColumns cols)
    EncodeError encode_header(const Layout& l, uint8_t* out, const HeaderValues& v,
                              size_t payload_len)
    size_t group_by_key(const uint64_t* keys, size_t n, uint32_t* order,
                        uint32_t* group_starts) except +

    cdef struct ValueColumn:
        const uint64_t* values
        size_t stride

    cdef struct RecordsFault:
        EncodeError error
        size_t index
        uint64_t value

    size_t uniform_frame_stride(const int64_t* offsets, const uint32_t* sizes, size_t count)
    size_t first_short_payload(const uint32_t* sizes, size_t count, size_t header_size, size_t itemsize)
    void gather_payload_records(const uint8_t* base, const int64_t* offsets, const uint32_t* sizes,
                                size_t count, size_t header_size, size_t itemsize, uint8_t* out,
                                uint8_t* valid)
    RecordsFault encode_records(const Layout& l, const uint8_t* records, size_t count, size_t row_bytes,
                                ptrdiff_t row_stride, ValueColumn types, ValueColumn seqs, ValueColumn ids,
                                uint8_t* out)

    cdef cppclass CppFrameDecoder "fastpacket::FrameDecoder":
        cppclass FeedPlan:
            FeedPlan()
            cpp_bool head_complete
            size_t scan_begin
            size_t scan_end
            size_t count
            size_t data_bytes
            ErrorInfo error

        CppFrameDecoder(const Layout& layout, size_t max_packet_size, size_t max_aggregate_size)
        const Layout& layout()
        int64_t max_packet_size()
        int64_t frame_limit()
        size_t pending()
        uint64_t stream_offset()
        cpp_bool failed()
        void reset()
        FeedPlan plan(const uint8_t* data, size_t n)
        FeedPlan plan_indexed(const uint8_t* data, size_t n, IndexColumns cols)
        size_t index_capacity(size_t n)
        void emit(const uint8_t* data, size_t n, const FeedPlan& p, uint8_t* out,
                  IndexColumns cols) except +
        @staticmethod
        cpp_bool zero_copy(const FeedPlan& p)


cdef extern from "fastpacket/ring.hpp" namespace "fastpacket" nogil:
    const size_t kMaxRingPins
    const uint64_t kMaxRingCapacity

    cdef struct RingSpan:
        uint8_t* data
        size_t size

    cdef cppclass CppRingBuffer "fastpacket::RingBuffer":
        CppRingBuffer()
        cpp_bool init(uint64_t capacity, cpp_bool double_map)
        size_t capacity()
        cpp_bool double_mapped()
        size_t size()
        size_t free_space()
        size_t free_now()
        RingSpan write_span()
        void commit(size_t n)
        void store(uint64_t index, const uint8_t* src, size_t n)
        cpp_bool pin_write(uint64_t index)
        void unpin_write(uint64_t index)
        uint64_t head_index()
        size_t readable()
        RingSpan read_span()
        void read_segments(RingSpan* first, RingSpan* second)
        void load(uint64_t index, uint8_t* dst, size_t n)
        void consume(size_t n)
        cpp_bool pin_read(uint64_t index)
        void unpin_read(uint64_t index)
        uint64_t tail_index()
        size_t read_pins()
        size_t write_pins()


cdef extern from "fastpacket/sendbuf.hpp" namespace "fastpacket" nogil:
    const size_t kDefaultSendBufferBytes
    const size_t kDefaultFlushMinPackets
    const double kDefaultFlushFillRatio

    cdef enum class SendStatus(uint8_t):
        ok
        full
        never_fits
        encode_error

    cdef cppclass CppSendBuffer "fastpacket::SendBuffer":
        CppSendBuffer(const Layout& layout, size_t max_bytes)
        void attach(uint8_t* buffer)
        size_t max_bytes()
        size_t size()
        size_t count()
        size_t free_bytes()
        uint64_t next_seq()
        void set_next_seq(uint64_t seq)
        uint64_t seq_max()
        SendStatus send(uint64_t type, const uint8_t* payload, size_t n, uint64_t player_id,
                        cpp_bool explicit_seq, uint64_t seq, uint64_t* seq_used, EncodeError* err)
        SendStatus broadcast[Id](uint64_t type, const uint8_t* payload, size_t n, const Id* ids,
                                 size_t count, uint64_t* first_seq, size_t* bad_index, EncodeError* err)
        cpp_bool append_with_header(const uint8_t* header, const uint8_t* payload, size_t n, uint64_t player_id)
        SendStatus append_records[Id](uint64_t type, const uint8_t* records, size_t count, size_t row_bytes,
                                      ptrdiff_t row_stride, const Id* ids, size_t id_stride, uint64_t* first_seq,
                                      size_t* bad_index, EncodeError* err)
        SendStatus append_frames(const uint8_t* base, const int64_t* offsets, const uint32_t* sizes,
                                 size_t count, cpp_bool renumber)
        size_t append_frames_fitting(const uint8_t* base, const int64_t* offsets, const uint32_t* sizes,
                                     size_t count)
        cpp_bool should_flush(size_t min_packets, double fill_ratio)

    void fanout_frames(CppSendBuffer* const* targets, size_t n, const uint8_t* base, const int64_t* offsets,
                       const uint32_t* sizes, size_t count, cpp_bool renumber, SendStatus* status)


cdef extern from "fastpacket/aggregate.hpp" namespace "fastpacket" nogil:
    const size_t kAggregateHeaderBytes
    const size_t kMaxAggregateCount
    const uint64_t kRawSizeLimit
    const uint64_t kDefaultMaxRawSize
    const size_t kDefaultCompressionThreshold
    const double kDefaultMinSaving

    cdef struct AggregateHeader:
        uint8_t codec
        uint8_t flags
        uint16_t count
        uint32_t raw_size

    cdef enum class AggregateCheck(uint8_t):
        ok
        frame
        not_aggregate
        flags
        codec
        max_raw_size
        count
        raw_size
        packet_size
        nested
        max_packet_size

    cdef struct AggregateFault:
        AggregateCheck check
        uint64_t offset
        int64_t value
        int64_t limit
        uint64_t index

    cdef struct AggregateFrame:
        AggregateHeader header
        size_t body_offset
        size_t body_size

    void write_aggregate_header(uint8_t* out, const AggregateHeader& h)
    AggregateFault parse_aggregate_frame(const Layout& l, const uint8_t* frame, size_t n,
                                         uint64_t max_raw_size, AggregateFrame* out)
    const int64_t kNoMaxPacketSize
    cpp_bool declared_aggregate(const Layout& l, const uint8_t* frame, size_t n, AggregateHeader* out)
    AggregateFault check_aggregate_body(const Layout& l, const uint8_t* body, size_t n, size_t count,
                                        int64_t base_offset, IndexColumns* cols, int64_t max_packet_size)
    void gather_frames(const uint8_t* base, const int64_t* offsets, const uint32_t* sizes,
                       size_t count, uint8_t* out)
    cpp_bool frames_contiguous(const int64_t* offsets, const uint32_t* sizes, size_t begin, size_t end)
    cpp_bool compression_pays(size_t raw, size_t compressed, double min_saving)
    size_t split_runs(const uint32_t* sizes, size_t count, uint64_t max_body, size_t* ends,
                      size_t* too_big)

    cdef cppclass AggregateStats:
        cppclass Snapshot:
            Snapshot()
            uint64_t compressed, raw, bytes_in, bytes_out, unpacked, rejected

        void count_packed(cpp_bool with_codec, uint64_t nin, uint64_t nout)
        void count_unpacked()
        void count_rejected()
        Snapshot snapshot()


cdef extern from "fastpacket/limits.hpp" namespace "fastpacket" nogil:
    cdef cppclass TokenBucket:
        TokenBucket()
        TokenBucket(double packets_per_s, double bytes_per_s, double burst_s)
        cpp_bool enabled()
        void refill(double now)
        cpp_bool take(double packets, double bytes)
        size_t admit(double now, const uint32_t* sizes, size_t n)


cdef extern from "fastpacket/metrics.hpp" namespace "fastpacket::metrics" nogil:
    const unsigned kMetricBuckets "fastpacket::metrics::kBuckets"
    const uint64_t kFlagSumSqWrapped
    const size_t kMaxNameBytes
    const size_t kMetricCoreBytes "sizeof(fastpacket::metrics::MetricCore)"

    cdef struct U128:
        uint64_t lo
        uint64_t hi

    cdef cppclass MetricCore:
        void record(uint64_t v)
        uint64_t count()
        U128 sum()
        U128 sumsq()
        uint64_t min_value()
        uint64_t max_value()
        uint64_t flag_bits()
        uint64_t percentiles(const double* ps, size_t k, uint64_t* out)
        void copy_buckets(uint64_t* out)
        void reset()

    cdef cppclass CounterCore:
        void add(uint64_t n)
        uint64_t get()
        void reset()

    cdef cppclass GaugeCore:
        void set(double d)
        void add(double d)
        double get()
        void reset()

    T* create_zeroed[T]() except +
    void destroy_zeroed[T](T* p)

    unsigned bucket_index(uint64_t v)
    uint64_t bucket_lower(unsigned index)
    uint64_t bucket_upper(unsigned index)
    uint64_t bucket_middle(unsigned index)
    # The one clock of the native code (steady_clock: CLOCK_MONOTONIC on
    # Linux, the clock of time.monotonic() and asyncio's loop.time()).
    uint64_t monotonic_ns()

    cdef enum class ManyError(uint8_t):
        none
        negative
        not_finite
        too_large

    cdef struct ManyResult:
        ManyError error
        size_t index
        double value

    ManyResult record_many[T](MetricCore& m, const T* v, size_t n)

    cdef enum class MetricKind "fastpacket::metrics::Kind"(uint32_t):
        metric
        counter
        gauge

    cdef enum class SlotState(uint32_t):
        free
        claiming
        ready

    cdef enum class TableError(uint8_t):
        none
        too_small
        bad_magic
        bad_version
        bad_size

    cdef enum class SlotStatus(uint8_t):
        found
        created
        full
        kind_mismatch
        busy
        bad_name

    cdef struct SlotHeader:
        uint32_t kind
        uint32_t name_len
        char name[112]

    size_t file_bytes_for(uint32_t slots)

    cdef cppclass SharedTable:
        @staticmethod
        void init(uint8_t* base, uint32_t slots)
        TableError attach(uint8_t* base, size_t length)
        uint32_t slot_count()
        SlotHeader* header(uint32_t i)
        void* data(uint32_t i)
        SlotState state(uint32_t i)
        SlotStatus lookup(const char* name, size_t length, MetricKind kind, uint32_t* slot)
