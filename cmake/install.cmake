# Install rules (included by CMakeLists.txt when MLA_INSTALL is on): what `cmake --install` puts
# under the prefix, as ggml ships it:
#   include/mla/*.h                        the public headers (C++ and the C API mla.h)
#   lib/libmla.a, lib/libmla.so*           the library, static and shared
#   lib/cmake/mla/mlaConfig*.cmake         find_package(mla): mla::mla (shared, or static when
#                                          MLA_STATIC is set), mla::mla_shared, mla::mla_static
#   lib/pkgconfig/mla.pc                   pkg-config (relocatable: paths from the .pc's own place)
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

# mla_mpi.h declares the MPI communicator of the separate mla_mpi library (built in the tree for
# the mla program and the tests), which libmla does not contain: not installed with it.
install(DIRECTORY ${PROJECT_SOURCE_DIR}/include/mla DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}
        FILES_MATCHING PATTERN "*.h" PATTERN "mla_mpi.h" EXCLUDE)
install(TARGETS mla_static mla_shared EXPORT mlaTargets
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
        LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
        RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
set(MLA_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/mla)
install(EXPORT mlaTargets NAMESPACE mla:: DESTINATION ${MLA_CMAKE_DIR})
configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/mlaConfig.cmake.in
                              ${PROJECT_BINARY_DIR}/mlaConfig.cmake
                              INSTALL_DESTINATION ${MLA_CMAKE_DIR})
# 0.x: a minor version may change the API, so only the same major.minor is compatible.
write_basic_package_version_file(${PROJECT_BINARY_DIR}/mlaConfigVersion.cmake
                                 VERSION ${PROJECT_VERSION} COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/mlaConfig.cmake ${PROJECT_BINARY_DIR}/mlaConfigVersion.cmake
        DESTINATION ${MLA_CMAKE_DIR})
# mla.pc finds the prefix from its own place, lib/pkgconfig (or deeper, as libdir is).
file(RELATIVE_PATH MLA_PC_PREFIX /mla_prefix/${CMAKE_INSTALL_LIBDIR}/pkgconfig /mla_prefix)
configure_file(${PROJECT_SOURCE_DIR}/cmake/mla.pc.in ${PROJECT_BINARY_DIR}/mla.pc @ONLY)
install(FILES ${PROJECT_BINARY_DIR}/mla.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
