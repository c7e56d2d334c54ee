# Argument checks of the native entry points (_args.pxi): every integer
# argument goes through one of these, so an out-of-range or non-integer
# value is a ValueError/TypeError naming the argument, never an
# OverflowError nor a float silently truncated.

cdef uint64_t u64_arg(object value, str name, uint64_t maximum=*) except? 0xFFFFFFFFFFFFFFFF
cdef Py_ssize_t ssize_arg(object value, str name, Py_ssize_t minimum, Py_ssize_t maximum) except? -1
cdef double double_arg(object value, str name, double minimum, double maximum) except? -1.0
cdef object _as_index(object value, str name)
