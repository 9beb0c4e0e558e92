/* The raw-libuv floor of W6: run /bin/true n times (400), at most 8 at once,
 * with uv_spawn; check that each exited with status 0.
 * usage: w6_uv [W6] [n] [rounds]      (bench/run compiles it into a temp dir)
 * Round 0 (cold) runs first, then `rounds` warm ones. Prints "RESULT W6
 * floor ms_per_proc=..." (median of the warm rounds; cold_ms_per_proc: round 0): stdin,
 * stdout and stderr of the child all UV_IGNORE (/dev/null), the cheapest spawn.
 * Then "RESULT W6 floor_pipes ms_per_proc=...": the same with the child's
 * stdout and stderr on pipes read to EOF before the process counts as done,
 * which is what a run-and-capture call (braid.exec) has to do.
 * Exits 1 if a process did not start or did not exit 0. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#define LIMIT 8

#define CHECK(x) do { int rc_ = (x); if (rc_ < 0) { \
  fprintf(stderr, "W6 libuv: %s: %s\n", #x, uv_strerror(rc_)); exit(1); } } while (0)

typedef struct {
  uv_process_t proc;
  uv_pipe_t out[2];         /* stdout, stderr (pipes mode only) */
  int pending;              /* process exit + open pipes still to finish */
  char buf[4096];
} slot_t;

static uv_loop_t *loop;
static slot_t slots[LIMIT];
static int n, started, finished, ok, pipes;
static char *args[] = {"/bin/true", NULL};

static void start(slot_t *s);

static void slot_done(slot_t *s) {          /* one part of a slot finished */
  if (--s->pending > 0) return;
  finished++;
  if (started < n) start(s);
}

static void on_close(uv_handle_t *h) { slot_done(h->data); }

static void on_exit_cb(uv_process_t *p, int64_t status, int sig) {
  if (status == 0 && sig == 0) ok++;
  else fprintf(stderr, "W6 libuv: /bin/true exited %lld (signal %d)\n", (long long)status, sig);
  uv_close((uv_handle_t *)p, on_close);
}

static void on_alloc(uv_handle_t *h, size_t sz, uv_buf_t *b) {
  (void)sz;
  slot_t *s = h->data;
  *b = uv_buf_init(s->buf, sizeof s->buf);
}

static void on_read(uv_stream_t *st, ssize_t nr, const uv_buf_t *b) {
  (void)b;
  if (nr < 0) uv_close((uv_handle_t *)st, on_close);   /* EOF (or error) */
}

static void start(slot_t *s) {
  uv_stdio_container_t stdio[3];
  uv_process_options_t o;
  memset(&o, 0, sizeof o);
  o.file = args[0];
  o.args = args;
  o.exit_cb = on_exit_cb;
  o.stdio = stdio;
  o.stdio_count = 3;
  stdio[0].flags = UV_IGNORE;
  s->pending = 1;
  for (int i = 0; i < 2; i++) {
    if (pipes) {
      CHECK(uv_pipe_init(loop, &s->out[i], 0));
      s->out[i].data = s;
      stdio[i + 1].flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE;
      stdio[i + 1].data.stream = (uv_stream_t *)&s->out[i];
      s->pending++;
    } else {
      stdio[i + 1].flags = UV_IGNORE;
    }
  }
  s->proc.data = s;
  started++;
  CHECK(uv_spawn(loop, &s->proc, &o));
  if (pipes)
    for (int i = 0; i < 2; i++)
      CHECK(uv_read_start((uv_stream_t *)&s->out[i], on_alloc, on_read));
}

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* Round 0 runs first (cold: the first spawns of this fresh process), then
** `rounds` warm ones; prints the warm median (if any) and round 0. */
static void bench(const char *impl, int rounds) {
  double *ms = calloc(rounds + 1, sizeof *ms);
  for (int r = 0; r <= rounds; r++) {
    started = finished = ok = 0;
    uint64_t t0 = uv_hrtime();
    for (int i = 0; i < LIMIT && started < n; i++) start(&slots[i]);
    uv_run(loop, UV_RUN_DEFAULT);
    ms[r] = (uv_hrtime() - t0) / 1e6 / n;
    if (finished != n || ok != n) {
      fprintf(stderr, "W6 libuv: only %d of %d processes exited 0\n", ok, n);
      exit(1);
    }
  }
  if (rounds > 0) {
    double *w = ms + 1;
    qsort(w, rounds, sizeof *w, cmp);
    printf("RESULT W6 %s ms_per_proc=%.4f\n", impl,
           rounds % 2 ? w[rounds / 2] : (w[rounds / 2 - 1] + w[rounds / 2]) / 2);
  }
  printf("RESULT W6 %s cold_ms_per_proc=%.4f\n", impl, ms[0]);
  fflush(stdout);
  free(ms);
}

int main(int argc, char **argv) {
  if (argc > 1 && strcmp(argv[1], "W6") == 0) argc--, argv++;
  n = argc > 1 ? atoi(argv[1]) : 400;
  int rounds = argc > 2 ? atoi(argv[2]) : 3;
  loop = uv_default_loop();
  pipes = 0;
  bench("floor", rounds);
  pipes = 1;
  bench("floor_pipes", rounds);
  return uv_loop_close(loop) == 0 ? 0 : 1;
}
