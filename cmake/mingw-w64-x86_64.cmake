# Cross-compiling the C++ core and its tests for 64-bit Windows with
# Debian's mingw-w64 (apt-get install g++-mingw-w64-x86-64-posix), and
# running the tests under wine when it is installed (apt-get install wine64):
#
#   cmake -S . -B build/mingw -DCMAKE_TOOLCHAIN_FILE=cmake/mingw-w64-x86_64.cmake \
#         -DFASTPACKET_BUILD_CPP_TESTS=ON
#   cmake --build build/mingw && ctest --test-dir build/mingw   # each test.exe through wine
#
# The -posix flavour of the compiler: its libstdc++ has std::thread (the
# concurrency tests need it); the -win32 flavour of GCC 12 does not.
set(CMAKE_SYSTEM_NAME Windows)
set(CMAKE_SYSTEM_PROCESSOR x86_64)
set(_mingw x86_64-w64-mingw32)
find_program(CMAKE_CXX_COMPILER NAMES ${_mingw}-g++-posix ${_mingw}-g++ REQUIRED)
find_program(CMAKE_RC_COMPILER NAMES ${_mingw}-windres)
set(CMAKE_FIND_ROOT_PATH /usr/${_mingw})
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)

# ctest runs each test executable through wine (Debian installs the 64-bit
# loader as /usr/lib/wine/wine64; the `wine` package adds /usr/bin/wine).
find_program(FASTPACKET_WINE NAMES wine64 wine PATHS /usr/lib/wine NO_CMAKE_FIND_ROOT_PATH)
if(FASTPACKET_WINE)
  set(CMAKE_CROSSCOMPILING_EMULATOR ${FASTPACKET_WINE})
endif()
