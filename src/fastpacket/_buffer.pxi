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
    # cnp.ndarray: the type object numpy's C API imported, no attribute lookup per call
    arr = PyArray_NewFromDescr(<cnp.PyTypeObject*>cnp.ndarray, <cnp.PyArray_Descr*>dtype, 1, &dims,
                               &strides, <void*>(data if data != NULL else &_EMPTY_STORAGE),
                               0, NULL)
    cnp.set_array_base(arr, base)
    return arr


cdef object records_array(object records, str where):
    """`records` as a numpy array of one row per packet whose rows are each
    contiguous (the array itself when they are, else a C-contiguous copy);
    TypeError or ValueError naming `where` for anything else. Hold the
    result while a RecordsView of it is in use."""
    if not isinstance(records, np.ndarray):
        raise TypeError(f"{where}: records must be a numpy array (structured, or 2-d uint8; one row per "
                        f"packet), not {type(records).__name__!r}")
    cdef cnp.ndarray arr = <cnp.ndarray>records
    if arr.dtype.hasobject:
        raise TypeError(f"{where}: records of dtype {arr.dtype} hold Python objects, not bytes")
    cdef int nd = cnp.PyArray_NDIM(arr)
    if nd < 1:
        raise ValueError(f"{where}: records must have at least one dimension (one row per packet), "
                         f"got a 0-d array")
    cdef cnp.npy_intp* shape = cnp.PyArray_DIMS(arr)
    cdef cnp.npy_intp* strides = cnp.PyArray_STRIDES(arr)
    cdef cnp.npy_intp expected = cnp.PyArray_ITEMSIZE(arr)
    cdef int k
    for k in range(nd - 1, 0, -1):  # a row's inner dimensions must be C-contiguous
        if shape[k] > 1 and strides[k] != expected:
            return np.ascontiguousarray(arr)
        expected *= shape[k]
    return arr


cdef int records_view(object arr, RecordsView* out) except -1:
    """The rows of an array records_array() returned."""
    cdef cnp.ndarray a = <cnp.ndarray>arr
    cdef int nd = cnp.PyArray_NDIM(a), k
    cdef Py_ssize_t row = cnp.PyArray_ITEMSIZE(a)
    for k in range(1, nd):
        row *= cnp.PyArray_DIMS(a)[k]
    out.data = <const uint8_t*>cnp.PyArray_DATA(a)
    out.count = cnp.PyArray_DIMS(a)[0]
    out.row_bytes = row
    out.row_stride = cnp.PyArray_STRIDES(a)[0]
    return 0


cdef object u64_values(object values, Py_ssize_t n, str name, U64Values* out):
    """Header values for n packets into *out: None (0 for all), an integer
    (the same for all) or one non-negative integer per packet. Returns the
    array *out points into (hold it while *out is in use), or None."""
    out.values = NULL
    out.stride = 0
    out.scalar = 0
    if values is None:
        return None
    if isinstance(values, (int, np.integer)):
        out.scalar = u64_arg(values, name)
        out.values = &out.scalar
        return None
    arr = np.asarray(values)
    if arr.ndim == 0:  # a float, a string...: never truncated to an id
        raise TypeError(f"{name} must be None, an int or one int per payload, not {type(values).__name__!r}")
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"{name} must be an integer or have one value per payload ({n}), got shape {arr.shape}")
    if n and arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must be integers, got dtype {arr.dtype}")
    if n and arr.dtype.kind == "i" and arr.min() < 0:
        raise ValueError(f"{name} must be >= 0, got {arr.min()}")
    arr = np.ascontiguousarray(arr, dtype=np.uint64)
    cdef cnp.uint64_t[::1] v = arr
    if n:
        out.values = &v[0]
        out.stride = 1
    else:
        out.values = &out.scalar  # no packets: nothing is read
    return arr
