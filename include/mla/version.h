/* The library's version. The one place it is written: CMakeLists.txt reads it from here for
 * project(VERSION), mlaConfigVersion.cmake and mla.pc. C and C++. */
#ifndef MLA_VERSION_H
#define MLA_VERSION_H

#define MLA_VERSION_MAJOR 0
#define MLA_VERSION_MINOR 1
#define MLA_VERSION_PATCH 0
/* One number that orders versions: 10000 x major + 100 x minor + patch. */
#define MLA_VERSION (MLA_VERSION_MAJOR * 10000 + MLA_VERSION_MINOR * 100 + MLA_VERSION_PATCH)

#endif /* MLA_VERSION_H */
