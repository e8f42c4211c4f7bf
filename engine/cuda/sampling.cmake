# spark_engine_cuda_sampling: GPU sampling (engine/cuda/sampling.h, gpu_sampler.h). Included by
# engine/cuda/CMakeLists.txt.
add_library(spark_engine_cuda_sampling STATIC
  ${CMAKE_CURRENT_LIST_DIR}/sampling.cu
  ${CMAKE_CURRENT_LIST_DIR}/gpu_sampler.cc
)
target_include_directories(spark_engine_cuda_sampling PUBLIC ${PROJECT_SOURCE_DIR})
target_link_libraries(spark_engine_cuda_sampling PUBLIC spark_common spark_engine_runtime
                      CUDA::cudart CUDA::cublasLt spark::nccl PRIVATE spark_warnings)
set_target_properties(spark_engine_cuda_sampling PROPERTIES CUDA_SEPARABLE_COMPILATION OFF)
target_compile_options(spark_engine_cuda_sampling PRIVATE
  $<$<COMPILE_LANGUAGE:CUDA>:--expt-relaxed-constexpr -lineinfo>)
