# spark_add_test(NAME name SOURCES ... LIBS ... [LABELS ...] [TIMEOUT s])
# Builds one GoogleTest binary and registers each of its tests with ctest (label "unit" unless
# LABELS says otherwise). Binaries labelled "unit" are collected into the target
# spark_unit_tests, which the sanitizer presets build instead of everything.
# Test code (not the libraries it links) builds at SPARK_TEST_OPTIMIZATION in optimised configs:
# test sources are assertion-heavy and cost a third more to compile at -O3 for no test speed.
set(SPARK_TEST_OPTIMIZATION "-O1" CACHE STRING
    "optimisation flag for test sources in Release builds (empty: the build type's)")
function(spark_test_optimization target)
  if(SPARK_TEST_OPTIMIZATION)
    target_compile_options(${target} PRIVATE
      $<$<AND:$<COMPILE_LANGUAGE:CXX>,$<CONFIG:Release,RelWithDebInfo>>:${SPARK_TEST_OPTIMIZATION}>)
  endif()
endfunction()

function(spark_add_test)
  cmake_parse_arguments(T "" "NAME;TIMEOUT" "SOURCES;LIBS;LABELS" ${ARGN})
  add_executable(${T_NAME} ${T_SOURCES})
  target_link_libraries(${T_NAME} PRIVATE ${T_LIBS} GTest::gmock GTest::gtest_main spark_warnings)
  target_include_directories(${T_NAME} PRIVATE ${PROJECT_SOURCE_DIR})
  spark_test_optimization(${T_NAME})
  target_compile_definitions(${T_NAME} PRIVATE
    SPARK_SOURCE_DIR="${PROJECT_SOURCE_DIR}" SPARK_BINARY_DIR="${PROJECT_BINARY_DIR}")
  if(NOT T_TIMEOUT)
    set(T_TIMEOUT 120)
  endif()
  if(NOT T_LABELS)
    set(T_LABELS unit)
  endif()
  if("unit" IN_LIST T_LABELS)
    set_property(GLOBAL APPEND PROPERTY SPARK_UNIT_TEST_TARGETS ${T_NAME})
  endif()
  gtest_discover_tests(${T_NAME} DISCOVERY_TIMEOUT 60
    PROPERTIES LABELS "${T_LABELS}" TIMEOUT ${T_TIMEOUT})
endfunction()
