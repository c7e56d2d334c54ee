# Buffer-protocol helpers shared by every area (msgpack-python's hygiene:
# any C-contiguous buffer, released on every path by the caller).

# A non-null address for empty arrays, so numpy never allocates for them.
cdef uint64_t _EMPTY_STORAGE = 0


cdef int get_contiguous_buffer(object obj, Py_buffer* view, str where) except -1:
    """Acquire a C-contiguous byte view of `obj`; a clear TypeError or
    BufferError naming `where` otherwise. The caller releases it."""
    if not PyObject_CheckBuffer(obj):
        raise TypeError(f"{where} needs a bytes-like object (bytes, bytearray, memoryview, "
                        f"numpy array), not {type(obj).__name__!r}")
    try:
        PyObject_GetBuffer(obj, view, PyBUF_SIMPLE)
    except (BufferError, ValueError) as exc:
        raise BufferError(f"{where} needs a C-contiguous buffer; this "
                          f"{type(obj).__name__!r} is not contiguous ({exc})") from None
    return 0


cdef object readonly_view(object base, object dtype, Py_ssize_t count, Py_ssize_t stride,
                          const void* data):
    """A read-only 1-d numpy array over memory that `base` keeps alive."""
    cdef cnp.npy_intp dims = count
    cdef cnp.npy_intp strides = stride
    Py_INCREF(dtype)  # PyArray_NewFromDescr steals a reference to the descr
    arr = PyArray_NewFromDescr(<cnp.PyTypeObject*>np.ndarray, <cnp.PyArray_Descr*>dtype, 1, &dims,
                               &strides, <void*>(data if data != NULL else &_EMPTY_STORAGE),
                               0, NULL)
    cnp.set_array_base(arr, base)
    return arr
