/* The raw-libuv floor of W2: n uv_timer_t, each firing once after 50 ms.
 * usage: w_uv [W2] [n] [rounds]      (bench/run compiles it into a temp dir)
 * Round 0 runs first (cold, in this fresh process), then `rounds` warm ones.
 * Prints "RESULT W2 floor wall_ms=..." (median of the warm rounds) and
 * "... cold_wall_ms=..." (round 0); exits 1 if a
 * timer did not fire. The runner measures its max RSS at N=1 and N=20000. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

static int fired;

static void on_timer(uv_timer_t *t) { (void)t; fired++; }

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

int main(int argc, char **argv) {
  if (argc > 1 && strcmp(argv[1], "W2") == 0) argc--, argv++;
  int n = argc > 1 ? atoi(argv[1]) : 20000;
  int rounds = argc > 2 ? atoi(argv[2]) : 5;
  uv_loop_t *loop = uv_default_loop();
  double *ms = calloc(rounds + 1, sizeof *ms);
  for (int r = 0; r <= rounds; r++) {
    uv_timer_t *timers = malloc(sizeof *timers * n);
    fired = 0;
    uint64_t t0 = uv_hrtime();
    uv_update_time(loop);
    for (int i = 0; i < n; i++) {
      uv_timer_init(loop, &timers[i]);
      uv_timer_start(&timers[i], on_timer, 50, 0);
    }
    uv_run(loop, UV_RUN_DEFAULT);
    ms[r] = (uv_hrtime() - t0) / 1e6;
    if (fired != n) {
      fprintf(stderr, "W2 libuv: only %d of %d timers fired\n", fired, n);
      return 1;
    }
    for (int i = 0; i < n; i++) uv_close((uv_handle_t *)&timers[i], NULL);
    uv_run(loop, UV_RUN_DEFAULT);
    free(timers);
  }
  if (rounds > 0) {
    double *w = ms + 1;
    qsort(w, rounds, sizeof *w, cmp);
    printf("RESULT W2 floor wall_ms=%.3f\n", rounds % 2 ? w[rounds / 2] : (w[rounds / 2 - 1] + w[rounds / 2]) / 2);
  }
  printf("RESULT W2 floor cold_wall_ms=%.3f\n", ms[0]);
  free(ms);
  return uv_loop_close(loop) == 0 ? 0 : 1;
}
