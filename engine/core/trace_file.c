/*
** trace_file.c: the execution trace's file (braid --trace, braid.run's
** trace option, braid_options_t.trace): created when recording starts,
** written out with write(2) whenever the buffer fills, and completed (the
** JSON closed) on every way out: the end of the run, braid_close, a fatal
** error, an exit hook for a second Ctrl-C (prim.h), and an atexit
** handler for a process that exits with a trace still open (os.exit). Also the wait labels a primitive gives
** (braid_op_label), kept until the wait begins (trace.c).
*/
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "core/trace.h"

static struct braid_trace *open_traces;   /* for the atexit handler */

void braid__trace_flush (struct braid_trace *tr) {
  size_t off = 0;
  while (off < tr->len && !tr->failed) {
    ssize_t n = write(tr->fd, tr->buf + off, tr->len - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      fprintf(stderr, "braid: trace: cannot write: %s; recording stops\n",
              n < 0 ? strerror(errno) : "nothing written");
      tr->failed = 1;
    } else {
      off += (size_t) n;
    }
  }
  tr->len = 0;
}

/* ---- wait labels ---- */

/* The label of the wait the running task is about to begin. */
static void trace_vlabel (struct braid_trace *tr, const char *what,
                          const char *fmt, va_list ap) {
  int n = vsnprintf(tr->label, sizeof tr->label, fmt, ap);
  tr->has_label = n >= 0;
  tr->label_what = what;
}

void braid__trace_label (braid_engine_t *E, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  trace_vlabel(E->trace, NULL, fmt, ap);
  va_end(ap);
}

/* An op's label names that op's wait only: if its start fails and the
** task goes on to wait on something else, that wait keeps its own name. */
void braid_op_label (braid_op_t *op, const char *fmt, ...) {
  braid_engine_t *E = WAIT_TASK(OP_WAIT(op))->E;
  va_list ap;
  if (E->trace == NULL) return;
  va_start(ap, fmt);
  trace_vlabel(E->trace, OP_WAIT(op)->what, fmt, ap);
  va_end(ap);
}

int braid_tracing (braid_engine_t *E) {
  return E->trace != NULL;
}

/* ---- opening and closing ---- */

/* Ends the JSON and writes everything out; the file stays open. */
static void trace_end (struct braid_trace *tr) {
  static const char tail[] = "\n]}\n";
  memcpy(tr->buf + tr->len, tail, sizeof tail - 1);   /* there is room */
  tr->len += sizeof tail - 1;
  braid__trace_flush(tr);
}

/* braid leaves without unwinding (a second Ctrl-C, os.exit where it
** cannot wait): the JSON is completed now, and the trace takes nothing
** more (write(2) only; the buffer is whole between Lua instructions). */
static void trace_exit_hook (struct braid_exit_hook *h) {
  struct braid_trace *tr = container_of(h, struct braid_trace, hook);
  trace_end(tr);
  tr->failed = 1;
}

static void trace_atexit (void) {
  struct braid_trace *tr;
  for (tr = open_traces; tr; tr = tr->next) {
    trace_end(tr);
    close(tr->fd);
  }
  open_traces = NULL;
}

/* Starts recording E into the file at path (created or truncated); 0, or
** a negative errno-style code. */
int braid__trace_open (braid_engine_t *E, const char *path) {
  static int registered;
  struct braid_trace *tr;
  int fd;
  if (E->trace) braid__trace_close(E);   /* a run that raised before its end */
  if (!registered) {
    if (atexit(trace_atexit) != 0) return UV_ENOMEM;
    registered = 1;
  }
  if ((tr = calloc(1, sizeof *tr)) == NULL) return UV_ENOMEM;
  fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
  if (fd < 0) {
    int err = -errno;
    free(tr);
    return err;
  }
  tr->E = E;
  tr->fd = fd;
  tr->t0 = uv_hrtime();
  tr->c_live = tr->c_ready = tr->c_handles = (unsigned) -1;
  tr->len = (size_t) snprintf(tr->buf, sizeof tr->buf,
    "{\"displayTimeUnit\":\"ms\",\"otherData\":{\"clock\":\"%s\","
    "\"braid\":\"%s\"},\"traceEvents\":[\n"
    "{\"ph\":\"M\",\"pid\":1,\"tid\":0,\"name\":\"process_name\","
    "\"args\":{\"name\":\"braid\"}},\n"
    "{\"ph\":\"M\",\"pid\":1,\"tid\":0,\"name\":\"thread_name\","
    "\"args\":{\"name\":\"scheduler\"}},\n"
    "{\"ph\":\"M\",\"pid\":1,\"tid\":0,\"name\":\"thread_sort_index\","
    "\"args\":{\"sort_index\":0}}",
    E->virtual_clock ? "virtual" : "real", BRAID_VERSION);
  braid__list_init(&tr->hook.link);
  tr->hook.fn = trace_exit_hook;   /* E's thread only: it writes the trace */
  braid__exit_hook_add(E, &tr->hook);
  tr->next = open_traces;
  open_traces = tr;
  E->trace = tr;
  return 0;
}

/* Stops recording: the last counters, then the end of the JSON; writes it
** out and closes the file. */
void braid__trace_close (braid_engine_t *E) {
  struct braid_trace *tr = E->trace, **p;
  if (tr == NULL) return;
  braid__trace_counters(E);
  trace_end(tr);
  close(tr->fd);
  braid__exit_hook_remove(&tr->hook);
  for (p = &open_traces; *p; p = &(*p)->next)
    if (*p == tr) { *p = tr->next; break; }
  E->trace = NULL;
  free(tr);
}
