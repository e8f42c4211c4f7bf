# Compiler flags, warnings and ccache shared by every target.
find_program(SPARK_CCACHE ccache)
if(SPARK_CCACHE)
  set(CMAKE_C_COMPILER_LAUNCHER ${SPARK_CCACHE})
  set(CMAKE_CXX_COMPILER_LAUNCHER ${SPARK_CCACHE})
  set(CMAKE_CUDA_COMPILER_LAUNCHER ${SPARK_CCACHE})
endif()

add_library(spark_warnings INTERFACE)
target_compile_options(spark_warnings INTERFACE
  $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wpedantic -Wno-unused-parameter>
  $<$<AND:$<COMPILE_LANGUAGE:CXX>,$<BOOL:${SPARK_WERROR}>>:-Werror>)
# GCC 12 at -O3 reports -Wrestrict on std::string concatenation inlined from libstdc++ (a false
# positive, GCC bug 105651); it is turned off there so that release builds pass with -Werror.
if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU" AND CMAKE_CXX_COMPILER_VERSION VERSION_LESS 13)
  target_compile_options(spark_warnings INTERFACE $<$<COMPILE_LANGUAGE:CXX>:-Wno-restrict>)
endif()

# Sanitizers: -DSPARK_SANITIZE=address,undefined or thread.
set(SPARK_SANITIZE "" CACHE STRING "Sanitizers to enable (address,undefined | thread)")
if(SPARK_SANITIZE)
  add_compile_options($<$<COMPILE_LANGUAGE:CXX>:-fsanitize=${SPARK_SANITIZE}>
                      $<$<COMPILE_LANGUAGE:CXX>:-fno-omit-frame-pointer>
                      $<$<COMPILE_LANGUAGE:CXX>:-fno-sanitize-recover=all>)
  add_link_options(-fsanitize=${SPARK_SANITIZE})
endif()
