# spark_engine_moe_config: the MoE tile-config table and workspace sizing (engine/cuda/moe_config.h)
# without CUDA: built in every build so that CPU tests (tests/engine/cuda) cover it;
# spark_engine_cuda_moe adds the kernels and MoeConfigTable::Create.
add_library(spark_engine_moe_config STATIC ${CMAKE_CURRENT_LIST_DIR}/moe_config.cc)
target_include_directories(spark_engine_moe_config PUBLIC ${PROJECT_SOURCE_DIR})
target_link_libraries(spark_engine_moe_config PUBLIC spark_common PRIVATE spark_warnings)
