# Buffer-protocol helpers shared by every area (_buffer.pxi).

cdef extern from "numpy/arrayobject.h":
    object PyArray_NewFromDescr(cnp.PyTypeObject* subtype, cnp.PyArray_Descr* descr, int nd,
                                cnp.npy_intp* dims, cnp.npy_intp* strides, void* data,
                                int flags, PyObject* obj)

cdef extern from "Python.h":
    object PyMemoryView_FromObject(object obj)

cdef int get_contiguous_buffer(object obj, Py_buffer* view, str where) except -1
cdef object readonly_view(object base, object dtype, Py_ssize_t count, Py_ssize_t stride,
                          const void* data)

# Rows of a numpy array, one payload (packet) per row: PacketBatch.build,
# SendBuffer.send_array, fastpacket.aio.scatter.
cdef struct RecordsView:
    const uint8_t* data                 # row 0
    Py_ssize_t count                    # rows
    Py_ssize_t row_bytes                # bytes of one row
    Py_ssize_t row_stride               # bytes from a row to the next (0 or negative too)

cdef object records_array(object records, str where)
cdef int records_view(object arr, RecordsView* out) except -1

# Header values for many packets: one per row (stride 1), one for all
# (stride 0, held in `scalar`), or none (values NULL: 0).
cdef struct U64Values:
    const uint64_t* values
    size_t stride
    uint64_t scalar

cdef object u64_values(object values, Py_ssize_t n, str name, U64Values* out)
