/*
** wsig.c: the wake-up one thread gives another's loop (struct braid_wsig;
** worker.h says how it is armed and signalled).
*/
#include <errno.h>
#include <stdint.h>
#include <sys/eventfd.h>
#include <unistd.h>
#include "io/worker.h"

int braid__wsig_open (struct braid_wsig *s) {
  s->fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  return s->fd < 0 ? -errno : 0;
}

int braid__wsig_start (uv_loop_t *loop, struct braid_wsig *s, uv_poll_cb cb) {
  int rc = uv_poll_init(loop, &s->poll, s->fd);
  if (rc != 0) return rc;
  return uv_poll_start(&s->poll, UV_READABLE, cb);   /* checks arguments only */
}

int braid__wsig_arm (struct braid_wsig *s) {
  if (s->pending) return 0;
  s->pending = 1;
  return 1;
}

void braid__wsig_wake (struct braid_wsig *s) {
  uint64_t one = 1;
  while (write(s->fd, &one, sizeof one) < 0 && errno == EINTR) ;
}

void braid__wsig_drain (struct braid_wsig *s) {
  uint64_t n;
  while (read(s->fd, &n, sizeof n) < 0 && errno == EINTR) ;
}
