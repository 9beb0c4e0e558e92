/* The plain-C peer of W6: run /bin/true n times (400), at most 8 at once,
 * with posix_spawn (glibc: clone(CLONE_VM|CLONE_VFORK)) and waitpid, no
 * event loop; with "fork" in place of "spawn", fork + execve, as libuv 1.44's
 * uv_spawn does. An optional heap of MB megabytes (malloc'd and touched)
 * shows how each grows with the parent's size.
 * usage: w6_spawn spawn|fork [n] [rounds] [heap MB]
 * Prints "RESULT W6 c_<mode>[_heapMB] ms_per_proc=..." (median of rounds).
 * Exits 1 if a process did not start or did not exit 0. */
#define _GNU_SOURCE
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define LIMIT 8
extern char **environ;
static char *args[] = {"/bin/true", NULL};

static double now (void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

static pid_t start (int use_fork) {
  pid_t pid;
  if (!use_fork) {
    if (posix_spawn(&pid, args[0], NULL, NULL, args, environ) != 0) return -1;
    return pid;
  }
  pid = fork();
  if (pid == 0) {
    execve(args[0], args, environ);
    _exit(127);
  }
  return pid;
}

static int cmp (const void *a, const void *b) {
  double x = *(const double *) a, y = *(const double *) b;
  return x < y ? -1 : x > y;
}

int main (int argc, char **argv) {
  int use_fork = argc > 1 && strcmp(argv[1], "fork") == 0;
  int n = argc > 2 ? atoi(argv[2]) : 400, rounds = argc > 3 ? atoi(argv[3]) : 3;
  int heap = argc > 4 ? atoi(argv[4]) : 0, r;
  double ms[64];
  if (heap > 0) {
    char *h = malloc((size_t) heap << 20);
    if (!h) return 1;
    memset(h, 1, (size_t) heap << 20);   /* live: mapped and touched */
  }
  if (rounds > 64) rounds = 64;
  for (r = 0; r < rounds; r++) {
    int started = 0, done = 0, running = 0, st;
    double t0 = now();
    while (done < n) {
      while (running < LIMIT && started < n) {
        if (start(use_fork) < 0) { fprintf(stderr, "W6 c: spawn failed\n"); return 1; }
        started++, running++;
      }
      if (wait(&st) < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        fprintf(stderr, "W6 c: /bin/true did not exit 0\n");
        return 1;
      }
      done++, running--;
    }
    ms[r] = (now() - t0) * 1e3 / n;
  }
  qsort(ms, (size_t) rounds, sizeof *ms, cmp);
  if (heap > 0) printf("RESULT W6 c_%s_heap%d ms_per_proc=%.3f\n", use_fork ? "fork" : "posix_spawn", heap, ms[rounds / 2]);
  else printf("RESULT W6 c_%s ms_per_proc=%.3f\n", use_fork ? "fork" : "posix_spawn", ms[rounds / 2]);
  return 0;
}
