# Debian packages built with CPack: `cmake --build BUILD --target package` (or scripts/package)
# writes spark-agent_<version>_<arch>.deb and spark-controller_<version>_<arch>.deb into BUILD.
#
#   spark-agent       spark-agent, spark-shard, spark-model, spark-agent.service,
#                     /etc/spark/agent.toml (conffile), man pages
#   spark-controller  spark-controller, sparkctl, spark-controller.service,
#                     /etc/spark/controller.toml (conffile), man pages
#
# The version is PROJECT_VERSION (the top CMakeLists.txt); the architecture is the build host's
# (dpkg --print-architecture): amd64 here, arm64 when built natively on a DGX Spark. Depends is
# computed by dpkg-shlibdeps from the binaries, plus the packages the maintainer scripts use and,
# with SPARK_CUDA=ON, the CUDA and NCCL runtime packages of NVIDIA's repository, which
# dpkg-shlibdeps cannot know (the toolkit in /usr/local/cuda is not a Debian package).
# Maintainer scripts, conffiles and man pages are in packaging/; units and configs in systemd/.

# Whoever publishes the packages sets the Maintainer field: -DSPARK_PACKAGE_MAINTAINER="Name <mail>".
set(SPARK_PACKAGE_MAINTAINER "spark maintainers <spark-maintainers@example.org>"
    CACHE STRING "Maintainer field of the .deb packages")

set(SPARK_PKG_DIR ${PROJECT_SOURCE_DIR}/packaging)
set(SPARK_PKG_OUT ${PROJECT_BINARY_DIR}/packaging)

# Binaries whose targets live in other folders (CMake >= 3.13 installs them from here).
install(TARGETS spark-shard spark-model RUNTIME DESTINATION bin COMPONENT agent)

# Units, configs (conffiles: listed in packaging/debian/<package>/conffiles).
install(FILES ${PROJECT_SOURCE_DIR}/systemd/spark-agent.service
        DESTINATION /lib/systemd/system COMPONENT agent)
install(FILES ${PROJECT_SOURCE_DIR}/systemd/agent.toml DESTINATION /etc/spark COMPONENT agent)
install(FILES ${PROJECT_SOURCE_DIR}/systemd/spark-controller.service
        DESTINATION /lib/systemd/system COMPONENT controller)
install(FILES ${PROJECT_SOURCE_DIR}/systemd/controller.toml
        DESTINATION /etc/spark COMPONENT controller)

# Man pages (gzip -9n: reproducible, no name or time stamp), changelog and copyright per package.
find_program(SPARK_GZIP gzip REQUIRED)
set(SPARK_AGENT_MAN spark-agent spark-shard spark-model)
set(SPARK_CONTROLLER_MAN spark-controller sparkctl)
set(SPARK_PKG_GENERATED)
foreach(page IN LISTS SPARK_AGENT_MAN SPARK_CONTROLLER_MAN)
  add_custom_command(
    OUTPUT ${SPARK_PKG_OUT}/man/${page}.1.gz
    COMMAND ${CMAKE_COMMAND} -E make_directory ${SPARK_PKG_OUT}/man
    COMMAND ${SPARK_GZIP} -9nc ${SPARK_PKG_DIR}/man/${page}.1 > ${SPARK_PKG_OUT}/man/${page}.1.gz
    DEPENDS ${SPARK_PKG_DIR}/man/${page}.1
    COMMENT "gzip man page ${page}.1"
    VERBATIM)
  list(APPEND SPARK_PKG_GENERATED ${SPARK_PKG_OUT}/man/${page}.1.gz)
endforeach()
# The changelog's date: $SOURCE_DATE_EPOCH when set (reproducible builds), else the configure time.
string(TIMESTAMP SPARK_PKG_DATE "%a, %d %b %Y %H:%M:%S +0000" UTC)
foreach(package spark-agent spark-controller)
  configure_file(${SPARK_PKG_DIR}/debian/changelog.in ${SPARK_PKG_OUT}/${package}/changelog @ONLY)
  add_custom_command(
    OUTPUT ${SPARK_PKG_OUT}/${package}/changelog.gz
    COMMAND ${SPARK_GZIP} -9nc ${SPARK_PKG_OUT}/${package}/changelog >
            ${SPARK_PKG_OUT}/${package}/changelog.gz
    DEPENDS ${SPARK_PKG_OUT}/${package}/changelog
    VERBATIM)
  list(APPEND SPARK_PKG_GENERATED ${SPARK_PKG_OUT}/${package}/changelog.gz)
endforeach()
add_custom_target(spark_package_files ALL DEPENDS ${SPARK_PKG_GENERATED})

foreach(page IN LISTS SPARK_AGENT_MAN)
  install(FILES ${SPARK_PKG_OUT}/man/${page}.1.gz DESTINATION share/man/man1 COMPONENT agent)
endforeach()
foreach(page IN LISTS SPARK_CONTROLLER_MAN)
  install(FILES ${SPARK_PKG_OUT}/man/${page}.1.gz DESTINATION share/man/man1
          COMPONENT controller)
endforeach()
foreach(component agent controller)
  set(package spark-${component})
  install(FILES ${SPARK_PKG_DIR}/debian/copyright ${SPARK_PKG_OUT}/${package}/changelog.gz
          DESTINATION share/doc/${package} COMPONENT ${component})
endforeach()
install(FILES ${SPARK_PKG_DIR}/debian/spark-agent/lintian-overrides
        DESTINATION share/lintian/overrides RENAME spark-agent COMPONENT agent)
install(FILES ${PROJECT_SOURCE_DIR}/docs/multi-node.md DESTINATION share/doc/spark-controller
        COMPONENT controller OPTIONAL)

# CPack DEB.
set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME spark)
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGE_VENDOR "spark")
set(CPACK_PACKAGE_CONTACT "${SPARK_PACKAGE_MAINTAINER}")
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_DEB_COMPONENT_INSTALL ON)
set(CPACK_COMPONENTS_ALL agent controller)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_SECTION misc)
set(CPACK_DEBIAN_PACKAGE_PRIORITY optional)
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION ON)
set(CPACK_DEBIAN_COMPRESSION_TYPE xz)
set(CPACK_STRIP_FILES ON)

# Packages the maintainer scripts use (adduser; deb-systemd-helper is in init-system-helpers).
set(SPARK_PKG_SCRIPT_DEPENDS "adduser, init-system-helpers (>= 1.54)")
set(SPARK_PKG_CUDA_DEPENDS "")
if(SPARK_CUDA)
  # The CUDA runtime, cuBLAS(Lt) and NCCL from NVIDIA's CUDA repository (DGX OS ships it), for
  # the CUDA release the binaries were built with (13.0: cuda-cudart-13-0, libcublas-13-0).
  set(SPARK_CUDA_SERIES "${CUDAToolkit_VERSION_MAJOR}-${CUDAToolkit_VERSION_MINOR}")
  set(SPARK_PKG_CUDA_DEPENDS
      "cuda-cudart-${SPARK_CUDA_SERIES}, libcublas-${SPARK_CUDA_SERIES}, libnccl2")
  # dpkg-shlibdeps must find the toolkit's libraries to read them (they belong to no Debian
  # package it knows, which CPack tolerates with --ignore-missing-info).
  get_filename_component(SPARK_NCCL_LIBRARY_DIR ${NCCL_LIBRARY} DIRECTORY)
  set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS_PRIVATE_DIRS ${CUDAToolkit_LIBRARY_DIR}
      ${SPARK_NCCL_LIBRARY_DIR})
endif()

set(CPACK_DEBIAN_AGENT_PACKAGE_NAME spark-agent)
set(CPACK_DEBIAN_AGENT_DESCRIPTION
    "spark node daemon: runs tensor-parallel shards of a large MoE model\n\
spark-agent registers the node with spark-controller, runs the node\n\
preflight (GPU, RDMA, model files) and supervises the spark-shard processes\n\
that load and serve one tensor-parallel slice each. Also contains\n\
spark-model, the offline checkpoint tool.")
set(SPARK_AGENT_DEPENDS "${SPARK_PKG_SCRIPT_DEPENDS}")
if(SPARK_PKG_CUDA_DEPENDS)
  string(APPEND SPARK_AGENT_DEPENDS ", ${SPARK_PKG_CUDA_DEPENDS}")
endif()
set(CPACK_DEBIAN_AGENT_PACKAGE_DEPENDS "${SPARK_AGENT_DEPENDS}")
set(CPACK_DEBIAN_AGENT_PACKAGE_CONTROL_EXTRA
    ${SPARK_PKG_DIR}/debian/spark-agent/conffiles ${SPARK_PKG_DIR}/debian/spark-agent/postinst
    ${SPARK_PKG_DIR}/debian/spark-agent/prerm ${SPARK_PKG_DIR}/debian/spark-agent/postrm)

set(CPACK_DEBIAN_CONTROLLER_PACKAGE_NAME spark-controller)
set(CPACK_DEBIAN_CONTROLLER_DESCRIPTION
    "spark cluster controller and its command-line client\n\
spark-controller keeps the deployed models running on the nodes'\n\
spark-agents (placement, rendezvous, failure recovery, run history in\n\
SQLite) and serves the REST and OpenAI-compatible HTTP API; sparkctl is its\n\
command-line client.")
set(CPACK_DEBIAN_CONTROLLER_PACKAGE_DEPENDS "${SPARK_PKG_SCRIPT_DEPENDS}")
set(CPACK_DEBIAN_CONTROLLER_PACKAGE_CONTROL_EXTRA
    ${SPARK_PKG_DIR}/debian/spark-controller/conffiles
    ${SPARK_PKG_DIR}/debian/spark-controller/postinst
    ${SPARK_PKG_DIR}/debian/spark-controller/prerm
    ${SPARK_PKG_DIR}/debian/spark-controller/postrm)

include(CPack)
