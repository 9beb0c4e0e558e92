/*
** signames.h: the one table of signal names (signames.c), for
** braid.signal (signal.c) and a child's signals (process.c).
*/
#ifndef BRAID_SIGNAMES_H
#define BRAID_SIGNAMES_H

struct braid_signame {
  const char *name;            /* "SIGTERM" */
  const char *what;            /* "signal SIGTERM": a braid.signal wait */
  int num;
  unsigned char watchable;     /* braid.signal may catch it */
};

/* The entry of signal number num, or NULL. */
const struct braid_signame *braid__signame_of(int num);

/* The entry named "SIGTERM" or "TERM", or NULL. */
const struct braid_signame *braid__signame_find(const char *name);

#endif
