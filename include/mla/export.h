/* MLA_API marks the library's public entry points: the declarations of include/mla/ (C++ and the
 * C API of mla.h). The shared libmla is compiled with -fvisibility=hidden, so these are the only
 * symbols it exports; internal functions stay local to the library (no interposition, no
 * clashes with an application's own symbols). The static libraries need no marking; the
 * attribute changes nothing there. C and C++ (mla.h includes it). */
#ifndef MLA_EXPORT_H
#define MLA_EXPORT_H

#if defined(__GNUC__) || defined(__clang__)
#define MLA_API __attribute__((visibility("default")))
#else
#define MLA_API
#endif

#endif /* MLA_EXPORT_H */
