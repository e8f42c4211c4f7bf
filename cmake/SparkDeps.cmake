# Finds every Debian 12 package that spark builds against (scripts/install-deps installs them).
find_package(Threads REQUIRED)
find_package(PkgConfig REQUIRED)
find_package(Protobuf REQUIRED)               # module mode: protobuf::libprotobuf, protobuf_generate()
find_package(cppzmq REQUIRED)                 # target cppzmq (libzmq through pkg-config)
find_package(SQLite3 REQUIRED)                # SQLite::SQLite3
find_package(nlohmann_json 3.11 REQUIRED)     # nlohmann_json::nlohmann_json
find_package(CLI11 REQUIRED)                  # CLI11::CLI11
find_package(Boost 1.81 REQUIRED)             # Boost::headers (Asio, Beast: header-only)
pkg_check_modules(SYSTEMD REQUIRED IMPORTED_TARGET libsystemd)
pkg_check_modules(PCRE2 REQUIRED IMPORTED_TARGET libpcre2-8)
pkg_check_modules(SODIUM REQUIRED IMPORTED_TARGET libsodium)
pkg_check_modules(TOMLPLUSPLUS REQUIRED IMPORTED_TARGET tomlplusplus)

# Gloo (CPU collectives): Debian ships a static library and headers, no CMake config.
find_path(GLOO_INCLUDE_DIR gloo/context.h REQUIRED)
find_library(GLOO_LIBRARY NAMES gloo REQUIRED)
add_library(spark::gloo UNKNOWN IMPORTED)
set_target_properties(spark::gloo PROPERTIES IMPORTED_LOCATION ${GLOO_LIBRARY}
                      INTERFACE_INCLUDE_DIRECTORIES ${GLOO_INCLUDE_DIR})
target_link_libraries(spark::gloo INTERFACE Threads::Threads)

if(SPARK_BUILD_TESTS)
  find_package(GTest REQUIRED)
  include(GoogleTest)
endif()
if(SPARK_BUILD_BENCH)
  find_package(benchmark REQUIRED)
endif()
