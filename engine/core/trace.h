/*
** trace.h: the execution recorder's state, shared by trace.c (formatting
** the events the core's hooks report) and trace_file.c (the file: open,
** write out, close on every way out; wait labels). Nothing else includes
** it: the core sees the recorder through core.h's hooks.
*/
#ifndef BRAID_TRACE_H
#define BRAID_TRACE_H

#include "core.h"

#define TRACE_BUF 65536
#define TRACE_EVENT_MAX 2048    /* no single event is larger */
#define TRACE_TEXT_MAX 200      /* bytes of a name, label or message */
#define SITE_CACHE 32

/* A place functions are defined at (len 0: none yet), and its text. */
struct trace_site {
  int line;
  char src[LUA_IDSIZE];
  size_t len;
  char text[96];
};

struct braid_trace {
  braid_engine_t *E;
  int fd, failed;
  uint64_t t0;                 /* real clock: when the trace began */
  size_t len;
  unsigned flows;              /* cancel flows: odd ids (spawns: even) */
  uint64_t actor;              /* the failed task whose fail-fast follows */
  struct braid_scope *origin;  /* the cancel being recorded */
  uint64_t origin_tid;
  int origin_open;             /* the origin's track has a slice open */
  unsigned c_live, c_ready, c_handles;   /* last counters written */
  int has_label;
  const char *label_what;      /* the wait it names (NULL: the next one) */
  int now_kept;                /* trace_now: `now` is to be used once */
  uint64_t now;
  uint64_t ts_ns;              /* the last timestamp written, as text */
  size_t ts_len;
  char ts_text[32];
  uint64_t key_tid;            /* the last event's tid and ts, as text */
  uint64_t key_ts;
  size_t key_len;
  char key_text[80];           /* at most 16 + 20 + 6 + 24 bytes */
  const char *what[8];         /* wait names seen, by address ... */
  char what_raw[8][48];        /* ... as they were ... */
  unsigned char what_len[8];   /* ... and escaped */
  char what_text[8][64];
  char label[TRACE_TEXT_MAX + 1];        /* the next wait's, if set */
  struct braid_trace *next;    /* open traces, for atexit */
  struct braid_exit_hook hook; /* a second Ctrl-C: completed before _exit */
  struct trace_site sites[SITE_CACHE];
  char buf[TRACE_BUF];
};

/* Writes the buffer out (trace_file.c); a failure stops the recording. */
void braid__trace_flush(struct braid_trace *tr);

#endif
