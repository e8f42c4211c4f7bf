# spark_engine_cuda_moe: router, permutation, FP8 activation quantisation and the fused MoE grouped
# GEMM (engine/cuda/moe*.h). Included by engine/cuda/CMakeLists.txt; spark_engine_cuda links it.
# The tile selection and scratch sizing (moe_config.cc) are host code in their own library,
# spark_engine_moe_config (engine/cuda/moe_config.cmake, part of every build).
add_library(spark_engine_cuda_moe STATIC
  ${CMAKE_CURRENT_LIST_DIR}/moe.cu
  ${CMAKE_CURRENT_LIST_DIR}/moe_gemm.cu
  ${CMAKE_CURRENT_LIST_DIR}/moe_gemv.cu
  ${CMAKE_CURRENT_LIST_DIR}/moe_grouped.cu
  ${CMAKE_CURRENT_LIST_DIR}/kernel_smem.cc
  ${CMAKE_CURRENT_LIST_DIR}/persistent_grid.cc
  ${CMAKE_CURRENT_LIST_DIR}/moe_pack.cc
)
target_include_directories(spark_engine_cuda_moe PUBLIC ${PROJECT_SOURCE_DIR})
target_link_libraries(spark_engine_cuda_moe PUBLIC spark_engine_moe_config spark_common
                      spark_engine_model CUDA::cudart PRIVATE spark_warnings)
set_target_properties(spark_engine_cuda_moe PROPERTIES CUDA_SEPARABLE_COMPILATION OFF)
target_compile_options(spark_engine_cuda_moe PRIVATE
  $<$<COMPILE_LANGUAGE:CUDA>:--expt-relaxed-constexpr -lineinfo>)

# bench_moe: the MoE kernel alone (time, bytes read, % of the copy-bandwidth roofline).
if(SPARK_BUILD_BENCH)
  add_executable(bench_moe ${CMAKE_CURRENT_LIST_DIR}/moe_bench.cu)
  target_link_libraries(bench_moe PRIVATE spark_engine_cuda)
  target_compile_options(bench_moe PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:--expt-relaxed-constexpr>)
endif()
