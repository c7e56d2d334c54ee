# Narrow declarations of the C++ core (csrc/fastpacket/*.hpp) used by the
# Cython bindings: only the symbols the .pyx code calls.
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libcpp cimport bool


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
        bool big_endian
        int length_index
        bool length_includes_header
        int64_t length_adjustment
        int type_index
        int seq_index
        int player_id_index
        bool valid()
        uint64_t read(const uint8_t* header, int index)
        void write(uint8_t* header, int index, uint64_t value)
        uint64_t field_max(int index)
        int64_t frame_size(const uint8_t* header)


cdef extern from "fastpacket/framing.hpp" namespace "fastpacket" nogil:
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

    cdef cppclass FeedPlan "fastpacket::FrameDecoder::FeedPlan":
        bool head_complete
        size_t scan_begin
        size_t scan_end
        size_t count
        size_t data_bytes
        ErrorInfo error

    cdef cppclass CFrameDecoder "fastpacket::FrameDecoder":
        CFrameDecoder(const Layout& layout, size_t max_packet_size)
        const Layout& layout()
        int64_t max_packet_size()
        size_t pending()
        uint64_t stream_offset()
        bool failed()
        void reset()
        FeedPlan plan(const uint8_t* data, size_t n)
        void emit(const uint8_t* data, size_t n, const FeedPlan& p, uint8_t* out,
                  IndexColumns cols) except +
        @staticmethod
        bool zero_copy(const FeedPlan& p)
