/*
** signames.c: the one table of signal names: what braid.signal catches
** and what a child's exit or proc:kill names. Signals a script may not
** watch (KILL and STOP cannot be caught; a handler for SEGV, BUS, ILL,
** FPE, TRAP, ABRT or SYS, a seccomp filter's kill, would hide a crash;
** PIPE is braid's own (EPIPE, or the end of a run whose stdout is gone),
** which libuv would reset to the default, killing braid at the next EPIPE,
** when the last waiter closed) are still names for children.
*/
#include <signal.h>
#include <string.h>
#include "io/signames.h"

#define S(n, w) {"SIG" #n, "signal SIG" #n, SIG##n, w}

static const struct braid_signame names[] = {
  S(HUP, 1), S(INT, 1), S(QUIT, 1), S(ILL, 0), S(TRAP, 0), S(ABRT, 0),
  S(BUS, 0), S(FPE, 0), S(KILL, 0), S(USR1, 1), S(SEGV, 0), S(USR2, 1),
  S(PIPE, 0), S(ALRM, 1), S(TERM, 1), S(CHLD, 1), S(CONT, 1), S(STOP, 0),
  S(TSTP, 1), S(TTIN, 1), S(TTOU, 1), S(URG, 1), S(XCPU, 1), S(XFSZ, 1),
  S(VTALRM, 1), S(PROF, 1), S(WINCH, 1), S(IO, 1), S(SYS, 0),
#ifdef SIGPWR
  S(PWR, 1),
#endif
#ifdef SIGSTKFLT
  S(STKFLT, 1),
#endif
  /* Other names of the signals above: accepted, never reported (a
  ** lookup by number finds the name above first). */
  S(IOT, 0), S(POLL, 1),
#ifdef SIGCLD
  S(CLD, 1),
#endif
  {NULL, NULL, 0, 0}
};

const struct braid_signame *braid__signame_of (int num) {
  const struct braid_signame *s;
  for (s = names; s->name; s++)
    if (s->num == num) return s;
  return NULL;
}

const struct braid_signame *braid__signame_find (const char *name) {
  const struct braid_signame *s;
  for (s = names; s->name; s++)
    if (strcmp(name, s->name) == 0 || strcmp(name, s->name + 3) == 0)
      return s;
  return NULL;
}
