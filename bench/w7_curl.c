/* w7_curl.c: W7's floor, libcurl's multi interface alone (no event loop
** library): `get URL N INFLIGHT ROUNDS` keeps INFLIGHT GETs of URL going
** until N have completed, reusing easy handles (and so connections), and
** prints the median wall time; `stream URL PATH ROUNDS` writes URL's body
** to PATH and prints the median MB/s. */
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now (void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

static size_t sink (char *p, size_t s, size_t n, void *ud) {
  size_t *got = ud;
  (void) p;
  *got += s * n;
  return s * n;
}

static size_t to_file (char *p, size_t s, size_t n, void *ud) {
  return fwrite(p, s, n, (FILE *) ud);
}

static int cmp (const void *a, const void *b) {
  double x = *(const double *) a, y = *(const double *) b;
  return x < y ? -1 : x > y;
}

static double get_round (const char *url, int n, int inflight) {
  CURLM *m = curl_multi_init();
  CURL **h = calloc(inflight, sizeof *h);
  size_t *got = calloc(inflight, sizeof *got);
  int started = 0, done = 0, running, i;
  double t0 = now();
  for (i = 0; i < inflight && started < n; i++, started++) {
    h[i] = curl_easy_init();
    curl_easy_setopt(h[i], CURLOPT_URL, url);
    curl_easy_setopt(h[i], CURLOPT_WRITEFUNCTION, sink);
    curl_easy_setopt(h[i], CURLOPT_WRITEDATA, &got[i]);
    curl_easy_setopt(h[i], CURLOPT_PRIVATE, (char *) &got[i]);
    curl_multi_add_handle(m, h[i]);
  }
  while (done < n) {
    CURLMsg *msg;
    int left;
    curl_multi_perform(m, &running);
    while ((msg = curl_multi_info_read(m, &left))) {
      CURL *e = msg->easy_handle;
      long status = 0;
      size_t *g;
      curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
      curl_easy_getinfo(e, CURLINFO_PRIVATE, (char **) &g);
      if (msg->data.result != CURLE_OK || status != 200 || *g != 1024) {
        fprintf(stderr, "w7_curl: bad response %d %ld %zu\n",
                (int) msg->data.result, status, *g);
        exit(1);
      }
      *g = 0;
      done++;
      curl_multi_remove_handle(m, e);
      if (started < n) {
        started++;
        curl_multi_add_handle(m, e);
      }
    }
    if (done < n) curl_multi_poll(m, NULL, 0, 1000, NULL);
  }
  t0 = now() - t0;
  for (i = 0; i < inflight; i++)
    if (h[i]) curl_easy_cleanup(h[i]);
  curl_multi_cleanup(m);
  free(h);
  free(got);
  return t0;
}

static double stream_round (const char *url, const char *path) {
  FILE *f = fopen(path, "wb");
  CURL *e = curl_easy_init();
  CURLM *m = curl_multi_init();
  double t0 = now();
  int running = 1;
  curl_off_t size = 0;
  curl_easy_setopt(e, CURLOPT_URL, url);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, to_file);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, f);
  curl_multi_add_handle(m, e);
  while (running) {
    curl_multi_perform(m, &running);
    if (running) curl_multi_poll(m, NULL, 0, 1000, NULL);
  }
  t0 = now() - t0;
  curl_easy_getinfo(e, CURLINFO_SIZE_DOWNLOAD_T, &size);
  curl_multi_remove_handle(m, e);
  curl_easy_cleanup(e);
  curl_multi_cleanup(m);
  fclose(f);
  return (double) size / 1e6 / t0;
}

int main (int argc, char **argv) {
  double r[16];
  int rounds, i;
  curl_global_init(CURL_GLOBAL_DEFAULT);
  if (argc == 6 && strcmp(argv[1], "get") == 0) {
    rounds = atoi(argv[5]);
    for (i = 0; i < rounds && i < 16; i++)
      r[i] = get_round(argv[2], atoi(argv[3]), atoi(argv[4]));
    qsort(r, i, sizeof *r, cmp);
    printf("RESULT W7 floor get_ms=%.1f\n", r[i / 2] * 1e3);
  } else if (argc == 5 && strcmp(argv[1], "stream") == 0) {
    rounds = atoi(argv[4]);
    for (i = 0; i < rounds && i < 16; i++) r[i] = stream_round(argv[2], argv[3]);
    qsort(r, i, sizeof *r, cmp);
    printf("RESULT W7 floor stream_MBps=%.0f\n", r[i / 2]);
  } else {
    fprintf(stderr, "usage: w7_curl get URL N INFLIGHT ROUNDS | stream URL PATH ROUNDS\n");
    return 2;
  }
  return 0;
}
