/*
** slowgai.c: an LD_PRELOAD shim for the specs (spec/dns_spec.lua): a
** getaddrinfo that sleeps before answering for names starting with "slow"
** (SLOWGAI_SECONDS, default 3), as a slow or dead resolver does; two
** names in IDNA's ASCII form are 127.0.0.42 and 127.0.0.43, so that a spec
** sees what braid asked for; other names go to the real one. Built by the Makefile into $(BUILD)/slowgai.so.
*/
#define _GNU_SOURCE
#include <dlfcn.h>
#include <netdb.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef int (*gai_fn)(const char *, const char *, const struct addrinfo *,
                      struct addrinfo **);

int getaddrinfo (const char *node, const char *service,
                 const struct addrinfo *hints, struct addrinfo **res) {
  gai_fn real = (gai_fn) dlsym(RTLD_NEXT, "getaddrinfo");
  if (node && strncmp(node, "slow", 4) == 0) {
    const char *s = getenv("SLOWGAI_SECONDS");
    double secs = s ? atof(s) : 3;
    struct timespec ts;
    ts.tv_sec = (time_t) secs;
    ts.tv_nsec = (long) ((secs - (double) ts.tv_sec) * 1e9);
    while (nanosleep(&ts, &ts) != 0) {}
    return EAI_NONAME;
  }
  if (node && strcmp(node, "xn--bcher-kva.example") == 0)   /* bücher */
    return real("127.0.0.42", service, hints, res);
  if (node && strcmp(node, "xn--r8jz45g.xn--zckzah") == 0)  /* 例え.テスト */
    return real("127.0.0.43", service, hints, res);
  return real(node, service, hints, res);
}
