/* The raw-libuv floor of W5: a TCP echo server and 50 clients in one loop on
 * 127.0.0.1, each client doing `trips` sequential 64-byte round trips (write
 * 64 bytes, read until 64 bytes are back, compare them).
 * usage: w5_uv [W5] [trips] [rounds]      (bench/run compiles it into a temp dir)
 * Round 0 runs first (cold, in this fresh process), then `rounds` warm ones.
 * Prints "RESULT W5 floor wall_s=..." and "... trips_per_s=..." (median of the
 * warm rounds) and cold_wall_s / cold_trips_per_s (round 0); exits 1 if a round trip is missing or an echo came back wrong.
 *
 * What a floor should do (PERF.md): one read and one write per round trip, no
 * read_start/read_stop toggling, no allocation per read. Every stream starts
 * reading once and reads into its own buffer; writes go out with uv_try_write
 * (a queued uv_write only if the socket would block). TCP_NODELAY on both
 * sides, as braid, asyncio and Node (setNoDelay) have it. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#define CLIENTS 50
#define MSG 64
#define KINDS 16            /* distinct messages per client, used in turn */

#define CHECK(x) do { int rc_ = (x); if (rc_ < 0) { \
  fprintf(stderr, "W5 libuv: %s: %s\n", #x, uv_strerror(rc_)); exit(1); } } while (0)

typedef struct {            /* the server's side of a connection */
  uv_tcp_t tcp;
  char buf[65536];
} conn_t;

typedef struct {            /* a client */
  uv_tcp_t tcp;
  uv_connect_t req;
  uv_write_t wreq;
  int id, trip, got;
  char rbuf[2 * MSG];
  char msg[KINDS][MSG];
} client_t;

static uv_loop_t *loop;
static uv_tcp_t server;
static client_t clients[CLIENTS];
static int trips, done_clients;
static long total;
static uint64_t t_end;

static void fail(const char *what) { fprintf(stderr, "W5 libuv: %s\n", what); exit(1); }
static void on_close_free(uv_handle_t *h) { free(h); }

static void on_server_write(uv_write_t *w, int status) {
  CHECK(status);
  free(w);                  /* the request and its copy of the bytes, one block */
}

static void conn_alloc(uv_handle_t *h, size_t sz, uv_buf_t *b) {
  (void)sz;
  conn_t *c = (conn_t *)h;
  *b = uv_buf_init(c->buf, sizeof c->buf);
}

static void conn_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  if (n == UV_EOF) { uv_close((uv_handle_t *)s, on_close_free); return; }
  CHECK((int)n);
  if (n == 0) return;
  uv_buf_t out = uv_buf_init(b->base, (unsigned)n);
  int w = uv_try_write(s, &out, 1);
  if (w == UV_EAGAIN) w = 0;
  CHECK(w);
  if (w < n) {              /* would block: queue the rest (never seen at 64 bytes) */
    size_t rest = (size_t)n - (size_t)w;
    uv_write_t *req = malloc(sizeof *req + rest);
    if (!req) fail("out of memory");
    memcpy(req + 1, b->base + w, rest);
    out = uv_buf_init((char *)(req + 1), (unsigned)rest);
    CHECK(uv_write(req, s, &out, 1, on_server_write));
  }
}

static void on_connection(uv_stream_t *srv, int status) {
  CHECK(status);
  conn_t *c = malloc(sizeof *c);
  if (!c) fail("out of memory");
  CHECK(uv_tcp_init(loop, &c->tcp));
  CHECK(uv_accept(srv, (uv_stream_t *)&c->tcp));
  CHECK(uv_tcp_nodelay(&c->tcp, 1));
  CHECK(uv_read_start((uv_stream_t *)&c->tcp, conn_alloc, conn_read));
}

static void on_client_write(uv_write_t *w, int status) { (void)w; CHECK(status); }

static void client_send(client_t *c) {
  uv_buf_t b = uv_buf_init(c->msg[c->trip % KINDS], MSG);
  int w = uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
  if (w == MSG) return;
  if (w == UV_EAGAIN) w = 0;
  CHECK(w);
  b = uv_buf_init(c->msg[c->trip % KINDS] + w, MSG - w);   /* stable storage */
  CHECK(uv_write(&c->wreq, (uv_stream_t *)&c->tcp, &b, 1, on_client_write));
}

static void client_alloc(uv_handle_t *h, size_t sz, uv_buf_t *b) {
  (void)sz;
  client_t *c = (client_t *)h;
  *b = uv_buf_init(c->rbuf + c->got, sizeof c->rbuf - c->got);
}

static void client_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  (void)b;
  client_t *c = (client_t *)s;
  if (n == UV_EOF) fail("server closed a connection early");
  CHECK((int)n);
  c->got += (int)n;
  if (c->got < MSG) return;
  if (c->got > MSG) fail("more bytes came back than were sent");
  if (memcmp(c->rbuf, c->msg[c->trip % KINDS], MSG) != 0) fail("an echo came back wrong");
  c->got = 0;
  total++;
  if (++c->trip < trips) { client_send(c); return; }
  uv_close((uv_handle_t *)s, NULL);            /* the server's read sees EOF */
  if (++done_clients == CLIENTS) t_end = uv_hrtime();
}

static void on_connect(uv_connect_t *req, int status) {
  CHECK(status);
  client_t *c = req->data;
  CHECK(uv_tcp_nodelay(&c->tcp, 1));
  CHECK(uv_read_start((uv_stream_t *)&c->tcp, client_alloc, client_read));
  client_send(c);
}

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

int main(int argc, char **argv) {
  if (argc > 1 && strcmp(argv[1], "W5") == 0) argc--, argv++;
  trips = argc > 1 ? atoi(argv[1]) : 2000;
  int rounds = argc > 2 ? atoi(argv[2]) : 3;
  loop = uv_default_loop();
  double *s = calloc(rounds + 1, sizeof *s);
  for (int i = 0; i < CLIENTS; i++)
    for (int k = 0; k < KINDS; k++)
      for (int j = 0; j < MSG; j++) clients[i].msg[k][j] = (char)('!' + (i * 7 + k * 13 + j) % 90);

  for (int r = 0; r <= rounds; r++) {
    struct sockaddr_in addr;
    struct sockaddr_storage bound;
    int len = sizeof bound;
    CHECK(uv_ip4_addr("127.0.0.1", 0, &addr));
    CHECK(uv_tcp_init(loop, &server));
    CHECK(uv_tcp_bind(&server, (const struct sockaddr *)&addr, 0));
    CHECK(uv_listen((uv_stream_t *)&server, 511, on_connection));
    CHECK(uv_tcp_getsockname(&server, (struct sockaddr *)&bound, &len));
    addr.sin_port = ((struct sockaddr_in *)&bound)->sin_port;

    total = 0; done_clients = 0;
    uint64_t t0 = uv_hrtime();
    for (int i = 0; i < CLIENTS; i++) {
      client_t *c = &clients[i];
      c->id = i; c->trip = 0; c->got = 0; c->req.data = c;
      CHECK(uv_tcp_init(loop, &c->tcp));
      CHECK(uv_tcp_connect(&c->req, &c->tcp, (const struct sockaddr *)&addr, on_connect));
    }
    while (done_clients < CLIENTS && uv_run(loop, UV_RUN_ONCE)) {}
    if (done_clients < CLIENTS) fail("the loop stopped before every client was done");
    s[r] = (t_end - t0) / 1e9;
    if (total != (long)CLIENTS * trips) {
      fprintf(stderr, "W5 libuv: only %ld of %ld round trips\n", total, (long)CLIENTS * trips);
      return 1;
    }
    uv_close((uv_handle_t *)&server, NULL);
    uv_run(loop, UV_RUN_DEFAULT);                /* server sides see EOF and close */
  }
  if (rounds > 0) {
    double *w = s + 1;
    qsort(w, rounds, sizeof *w, cmp);
    double med = rounds % 2 ? w[rounds / 2] : (w[rounds / 2 - 1] + w[rounds / 2]) / 2;
    printf("RESULT W5 floor wall_s=%.4f\n", med);
    printf("RESULT W5 floor trips_per_s=%.0f\n", (double)CLIENTS * trips / med);
  }
  printf("RESULT W5 floor cold_wall_s=%.4f\n", s[0]);
  printf("RESULT W5 floor cold_trips_per_s=%.0f\n", (double)CLIENTS * trips / s[0]);
  free(s);
  return uv_loop_close(loop) == 0 ? 0 : 1;
}
