# spark_add_test(NAME name SOURCES ... LIBS ... [LABELS ...] [TIMEOUT s])
# Builds one GoogleTest binary and registers each of its tests with ctest (label "unit" unless
# LABELS says otherwise). Binaries labelled "unit" are collected into the target
# spark_unit_tests, which the sanitizer presets build instead of everything.
function(spark_add_test)
  cmake_parse_arguments(T "" "NAME;TIMEOUT" "SOURCES;LIBS;LABELS" ${ARGN})
  add_executable(${T_NAME} ${T_SOURCES})
  target_link_libraries(${T_NAME} PRIVATE ${T_LIBS} GTest::gmock GTest::gtest_main spark_warnings)
  target_include_directories(${T_NAME} PRIVATE ${PROJECT_SOURCE_DIR})
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
