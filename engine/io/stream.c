/*
** stream.c: what braid's streams share: the SIGPIPE policy.
*/
#include <signal.h>
#include <string.h>
#include "io/stream.h"

static void sigpipe_noop (int sig) { (void) sig; }

/* A handler, unlike SIG_IGN, is reset by exec, so child processes still
** start with the default disposition. */
void braid__stream_sigpipe (void) {
  struct sigaction sa;
  if (sigaction(SIGPIPE, NULL, &sa) == 0 && sa.sa_handler == SIG_DFL) {
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = sigpipe_noop;
    sigaction(SIGPIPE, &sa, NULL);
  }
}
