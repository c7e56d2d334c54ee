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
