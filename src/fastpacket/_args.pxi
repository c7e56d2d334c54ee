# Argument checks shared by every native entry point (see _args.pxd).

from cpython.exc cimport PyErr_Clear, PyErr_Occurred
from cpython.number cimport PyNumber_Index
from cpython.pyport cimport PY_SSIZE_T_MAX, PY_SSIZE_T_MIN
from libc.math cimport INFINITY

cdef extern from "Python.h":
    # Without Cython's automatic error check: the caller tests PyErr_Occurred.
    unsigned long long _u64_of_exact_int "PyLong_AsUnsignedLongLong"(PyObject* v)
    bint _exact_int "PyLong_CheckExact"(PyObject* v)


cdef object _as_index(object value, str name):
    """`value` as a Python int through __index__ (ints, numpy integers,
    bools); TypeError naming `name` for anything else, floats included: a
    float is never truncated to an integer argument."""
    try:
        return PyNumber_Index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, not {type(value).__name__!r}") from None


cdef uint64_t u64_arg(object value, str name, uint64_t maximum=0xFFFFFFFFFFFFFFFF) except? 0xFFFFFFFFFFFFFFFF:
    """`value` as an unsigned 64-bit argument in [0, maximum]: TypeError
    for what is not an int, ValueError naming `name` and the range for a
    value outside it."""
    cdef unsigned long long v
    if _exact_int(<PyObject*>value):
        v = _u64_of_exact_int(<PyObject*>value)
        if not (v == <unsigned long long>-1 and PyErr_Occurred() != NULL) and v <= maximum:
            return v
        PyErr_Clear()
    else:
        value = _as_index(value, name)
        if 0 <= value <= maximum:
            return value
    raise ValueError(f"{name} must be an int in [0, {maximum}], got {value}")


cdef Py_ssize_t ssize_arg(object value, str name, Py_ssize_t minimum, Py_ssize_t maximum) except? -1:
    """`value` as a size or index argument in [minimum, maximum]:
    TypeError for what is not an int, ValueError naming `name` and the
    range for a value outside it."""
    if not _exact_int(<PyObject*>value):
        value = _as_index(value, name)
    if minimum <= value <= maximum:
        return value
    raise ValueError(f"{name} must be an int in [{minimum}, {maximum}], got {value}")


cdef double double_arg(object value, str name, double minimum, double maximum) except? -1.0:
    """`value` as a real argument in [minimum, maximum] (ints and floats;
    NaN never is): TypeError naming `name` for what is not a real number,
    ValueError for a value outside the range."""
    cdef double d
    try:
        d = value
    except TypeError:
        raise TypeError(f"{name} must be a real number, not {type(value).__name__!r}") from None
    except OverflowError:  # an int too large for a double
        raise ValueError(f"{name} must be in [{minimum}, {maximum}], got {value}") from None
    if minimum <= d <= maximum:  # False for NaN
        return d
    raise ValueError(f"{name} must be in [{minimum}, {maximum}], got {value}")
