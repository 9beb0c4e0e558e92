/*
** http_multi.c: libcurl's multi interface driven by the engine's libuv
** loop: one CURLM per engine and loop (its connection cache, HTTP/2
** multiplexing), fed through curl_multi_socket_action from a uv_poll_t per
** socket libcurl asks to watch and one uv_timer_t for libcurl's timeouts.
**
** Invariants:
** - The multi is made on first use and registered as the engine's loop
**   user (prim.h); when braid detaches from the loop (braid.run ends,
**   braid_close) it takes every transfer still added off (a stream
**   response not yet closed ends with an error), cleans the multi up and
**   closes its timer and sockets' polls, so uv_loop_close finds nothing.
**   The struct is freed by the last close callback.
** - A poll is closed before its descriptor: libuv's close unregisters
**   the descriptor's number from epoll, which could belong to someone else
**   once the socket is closed (and epoll_ctl on a closed descriptor makes
**   libuv abort). libcurl 7.88 closes a socket it has not yet made a
**   connection's (one still connecting) without CLOSESOCKETFUNCTION and
**   says CURL_POLL_REMOVE afterwards, and a connection's socket with
**   close_cb after saying CURL_POLL_REMOVE. So:
**   - a socket that is a kept-alive connection's (learnt when a transfer
**     on it ends well: CURLINFO_ACTIVESOCKET) is "kept": its poll lives
**     until close_cb, across transfers, so a reused connection pays no
**     poll init and close, and CURL_POLL_REMOVE leaves its poll started
**     as it was (the next transfer usually wants the same events: no
**     epoll_ctl at all); it stops at its first event while unwatched;
**   - any other socket's poll is stopped at CURL_POLL_REMOVE and closed
**     before the libcurl call that said it returns (limbo_flush), unless
**     that call's end made it kept. Within one libcurl call no other
**     code opens a descriptor, and the loop does not run.
** - braid's handles never keep the loop alive by themselves: the timer
**   and the polls are referenced only while transfers are added, so that
**   an idle connection in the cache neither holds braid.run open nor
**   hides a deadlock.
** - Completion is read with curl_multi_info_read after each
**   curl_multi_socket_action, outside libcurl's callbacks; the message is
**   copied before the transfer is taken off (which invalidates it).
*/
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "io/http.h"

/* Easy handles kept for reuse: curl_easy_init costs more than a request
** to a local server, and a loop of requests reuses about as many as it
** keeps in flight. */
#define HTTP_IDLE 64

struct http_sock {
  struct braid_list link;    /* in m->socks until closed */
  struct braid_list limbo;   /* in m->limbo: REMOVEd, not kept */
  struct http_multi *m;
  uv_poll_t poll;
  curl_socket_t fd;
  int events;                /* the poll's (UV_READABLE...), 0: stopped */
  unsigned char kept;        /* a kept-alive connection's (see the top) */
  unsigned char watched;     /* libcurl watches it (not REMOVEd) */
};

struct http_multi {
  struct braid_loop_user user;
  braid_engine_t *E;
  CURLM *multi;
  uv_timer_t timer;
  struct braid_list xfers;   /* struct http_xfer: added */
  struct braid_list socks;   /* struct http_sock: polls open */
  struct braid_list limbo;   /* struct http_sock: to close (limbo_flush) */
  int active;                /* transfers added */
  int nidle;
  CURL *idle[HTTP_IDLE];     /* easy handles to reuse */
  unsigned char clean[HTTP_IDLE];   /* reusable without curl_easy_reset */
  int handles;               /* uv handles not yet closed */
  struct http_sock **byfd;   /* the polls by descriptor */
  size_t nbyfd;
  unsigned char detached;
};

static const char multi_key = 'h';

static void multi_handle_closed (struct http_multi *m) {
  if (--m->handles == 0 && m->detached) {
    free(m->byfd);
    free(m);
  }
}

static void timer_closed_cb (uv_handle_t *h) {
  multi_handle_closed((struct http_multi *) h->data);
}

static void sock_closed_cb (uv_handle_t *h) {
  struct http_sock *s = container_of(h, struct http_sock, poll);
  struct http_multi *m = s->m;
  free(s);
  multi_handle_closed(m);
}

static void sock_close (struct http_sock *s) {
  struct http_multi *m = s->m;
  if ((size_t) s->fd < m->nbyfd && m->byfd[s->fd] == s) m->byfd[s->fd] = NULL;
  braid__list_remove(&s->link);
  braid__list_remove(&s->limbo);
  uv_close((uv_handle_t *) &s->poll, sock_closed_cb);
}

/* A poll for fd (not started), in m->byfd; NULL when out of memory. */
static struct http_sock *sock_new (struct http_multi *m, curl_socket_t fd) {
  struct http_sock *s;
  if ((size_t) fd >= m->nbyfd) {
    size_t n = m->nbyfd ? m->nbyfd : 64;
    struct http_sock **t;
    while (n <= (size_t) fd) n *= 2;
    if ((t = realloc(m->byfd, n * sizeof *t)) == NULL) return NULL;
    memset(t + m->nbyfd, 0, (n - m->nbyfd) * sizeof *t);
    m->byfd = t;
    m->nbyfd = n;
  }
  if ((s = calloc(1, sizeof *s)) == NULL) return NULL;
  if (uv_poll_init_socket(braid_loop(m->E), &s->poll, fd) != 0) {
    free(s);
    return NULL;
  }
  s->m = m;
  s->fd = fd;
  m->handles++;
  braid__list_push(&m->socks, &s->link);
  braid__list_init(&s->limbo);
  m->byfd[fd] = s;
  return s;
}

static struct http_sock *sock_find (struct http_multi *m, curl_socket_t fd) {
  return fd >= 0 && (size_t) fd < m->nbyfd ? m->byfd[fd] : NULL;
}

/* Closes the polls of the sockets REMOVEd during the libcurl call that
** just returned, unless they turned out kept (see the top). */
static void limbo_flush (struct http_multi *m) {
  while (!braid__list_empty(&m->limbo)) {
    struct http_sock *s = container_of(m->limbo.next, struct http_sock, limbo);
    braid__list_remove(&s->limbo);
    if (!s->kept) sock_close(s);
  }
}

/* References h while transfers are added (see the invariants). */
static void multi_ref (struct http_multi *m, uv_handle_t *h) {
  if (m->active > 0) uv_ref(h);
  else uv_unref(h);
}

static void multi_ref_all (struct http_multi *m) {
  struct braid_list *l;
  multi_ref(m, (uv_handle_t *) &m->timer);
  for (l = m->socks.next; l != &m->socks; l = l->next)
    multi_ref(m, (uv_handle_t *) &container_of(l, struct http_sock,
                                               link)->poll);
}

/* Hands every finished transfer to http.c. */
static void multi_check (struct http_multi *m) {
  CURLMsg *msg;
  int pending;
  while ((msg = curl_multi_info_read(m->multi, &pending)) != NULL) {
    struct http_xfer *x = NULL;
    CURLcode result = msg->data.result;
    if (msg->msg != CURLMSG_DONE) continue;
    curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **) &x);
    if (result == CURLE_OK && x->fresh_sock) {
      /* the connection stays in the cache: its socket is kept from now */
      curl_socket_t fd = CURL_SOCKET_BAD;
      struct http_sock *s;
      curl_easy_getinfo(msg->easy_handle, CURLINFO_ACTIVESOCKET, &fd);
      if ((s = sock_find(m, fd)) != NULL) s->kept = 1;
    }
    braid__http_remove(x);   /* msg is invalid from here */
    braid__http_done(x, result);
  }
}

static void multi_action (struct http_multi *m, curl_socket_t fd, int ev) {
  int running;
  curl_multi_socket_action(m->multi, fd, ev, &running);
  multi_check(m);
  limbo_flush(m);
}

static void poll_cb (uv_poll_t *h, int status, int events) {
  struct http_sock *s = container_of(h, struct http_sock, poll);
  int ev = 0;
  if (!s->watched) {   /* an idle kept-alive connection: see the top */
    uv_poll_stop(&s->poll);
    s->events = 0;
    return;
  }
  if (status < 0) ev = CURL_CSELECT_ERR;
  else {
    if (events & UV_READABLE) ev |= CURL_CSELECT_IN;
    if (events & UV_WRITABLE) ev |= CURL_CSELECT_OUT;
  }
  multi_action(s->m, s->fd, ev);   /* may close s */
}

static void timer_cb (uv_timer_t *h) {
  multi_action((struct http_multi *) h->data, CURL_SOCKET_TIMEOUT, 0);
}

/* CURLMOPT_SOCKETFUNCTION: watch fd as `what` says. */
static int socket_cb (CURL *easy, curl_socket_t fd, int what, void *userp,
                      void *socketp) {
  struct http_multi *m = (struct http_multi *) userp;
  struct http_sock *s = (struct http_sock *) socketp;
  int events = 0;
  if (what == CURL_POLL_REMOVE) {
    if (s) {
      s->watched = 0;
      if (!s->kept) {   /* closed at the end of this libcurl call */
        uv_poll_stop(&s->poll);
        s->events = 0;
        braid__list_push(&m->limbo, &s->limbo);
      }
    }
    return 0;
  }
  if (s == NULL) {
    /* a kept socket's poll serves again; any other is a socket this
    ** number named before, possibly closed: never reused */
    if ((s = sock_find(m, fd)) != NULL && !s->kept) sock_close(s), s = NULL;
    if (s == NULL) {
      struct http_xfer *x = NULL;
      if ((s = sock_new(m, fd)) == NULL) return -1;
      multi_ref(m, (uv_handle_t *) &s->poll);
      curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **) &x);
      if (x) x->fresh_sock = 1;   /* multi_check may keep it */
    }
    curl_multi_assign(m->multi, fd, s);
  }
  braid__list_remove(&s->limbo);
  s->watched = 1;
  if (what & CURL_POLL_IN) events |= UV_READABLE;
  if (what & CURL_POLL_OUT) events |= UV_WRITABLE;
  if (events != s->events) {   /* uv_poll_start costs two epoll_ctl */
    uv_poll_start(&s->poll, events, poll_cb);
    s->events = events;
  }
  return 0;
}

/* CURLOPT_CLOSESOCKETFUNCTION: libcurl closes fd, a connection's socket
** (it has said CURL_POLL_REMOVE if it watched it). The poll goes first. */
static int close_cb (void *clientp, curl_socket_t fd) {
  struct http_sock *s = sock_find((struct http_multi *) clientp, fd);
  if (s) sock_close(s);
  return close(fd);
}

/* CURLMOPT_TIMERFUNCTION: -1 stops the timer; 0 means soon, which the
** timer gives (socket_action must not be called from here). */
static int timer_func (CURLM *multi, long ms, void *userp) {
  struct http_multi *m = (struct http_multi *) userp;
  (void) multi;
  if (ms < 0) uv_timer_stop(&m->timer);
  else uv_timer_start(&m->timer, timer_cb, (uint64_t) ms, 0);
  return 0;
}

static void multi_detach (struct braid_loop_user *u) {
  struct http_multi *m = container_of(u, struct http_multi, user);
  m->detached = 1;
  while (!braid__list_empty(&m->xfers)) {
    struct http_xfer *x = container_of(m->xfers.next, struct http_xfer, link);
    braid__http_remove(x);
    braid__http_done(x, CURLE_ABORTED_BY_CALLBACK);
  }
  while (m->nidle > 0) curl_easy_cleanup(m->idle[--m->nidle]);
  curl_multi_cleanup(m->multi);
  while (!braid__list_empty(&m->socks))
    sock_close(container_of(m->socks.next, struct http_sock, link));
  uv_close((uv_handle_t *) &m->timer, timer_closed_cb);
}

struct http_multi *braid__http_multi (braid_engine_t *E, int *rc) {
  static int global_done;
  struct braid_loop_user *u = braid__loop_user_find(E, &multi_key);
  struct http_multi *m;
  if (u) return container_of(u, struct http_multi, user);
  if (!global_done) {
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
      *rc = UV_ENOMEM;
      return NULL;
    }
    global_done = 1;
  }
  *rc = UV_ENOMEM;
  if ((m = calloc(1, sizeof *m)) == NULL) return NULL;
  if ((m->multi = curl_multi_init()) == NULL) {
    free(m);
    return NULL;
  }
  if ((*rc = uv_timer_init(braid_loop(E), &m->timer)) != 0) {
    curl_multi_cleanup(m->multi);
    free(m);
    return NULL;
  }
  m->E = E;
  m->timer.data = m;
  m->handles = 1;
  uv_unref((uv_handle_t *) &m->timer);
  braid__list_init(&m->xfers);
  braid__list_init(&m->socks);
  braid__list_init(&m->limbo);
  curl_multi_setopt(m->multi, CURLMOPT_SOCKETFUNCTION, socket_cb);
  curl_multi_setopt(m->multi, CURLMOPT_SOCKETDATA, m);
  curl_multi_setopt(m->multi, CURLMOPT_TIMERFUNCTION, timer_func);
  curl_multi_setopt(m->multi, CURLMOPT_TIMERDATA, m);
  /* libcurl's default cache is 4 connections per easy handle added, and
  ** a task's transfer is removed before the next task adds its own, so
  ** between batches the cache shrank and closed connections a loop of
  ** requests was about to reuse. */
  curl_multi_setopt(m->multi, CURLMOPT_MAXCONNECTS, 256L);
  m->user.key = &multi_key;
  m->user.detach = multi_detach;
  braid__loop_user_add(E, &m->user);
  return m;
}

CURL *braid__http_easy_new (braid_engine_t *E, int *fresh) {
  struct braid_loop_user *u = braid__loop_user_find(E, &multi_key);
  struct http_multi *m = u ? container_of(u, struct http_multi, user) : NULL;
  CURL *e;
  *fresh = 1;
  if (m == NULL || m->nidle == 0) return curl_easy_init();
  e = m->idle[--m->nidle];
  if (m->clean[m->nidle]) *fresh = 0;
  else curl_easy_reset(e);
  return e;
}

void braid__http_easy_free (braid_engine_t *E, CURL *e, int clean) {
  struct braid_loop_user *u = braid__loop_user_find(E, &multi_key);
  struct http_multi *m = u ? container_of(u, struct http_multi, user) : NULL;
  if (m && m->nidle < HTTP_IDLE) {
    /* no pointer into the freed transfer stays set */
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, NULL);
    m->clean[m->nidle] = (unsigned char) (clean != 0);
    m->idle[m->nidle++] = e;
  } else {
    curl_easy_cleanup(e);
  }
}

static void easy_sockets (CURL *e, struct http_multi *m) {
  curl_easy_setopt(e, CURLOPT_CLOSESOCKETFUNCTION, close_cb);
  curl_easy_setopt(e, CURLOPT_CLOSESOCKETDATA, m);
}

int braid__http_add (struct http_multi *m, struct http_xfer *x) {
  CURLMcode mc;
  if (x->fresh) easy_sockets(x->easy, m);
  curl_easy_setopt(x->easy, CURLOPT_PRIVATE, (char *) x);
  mc = curl_multi_add_handle(m->multi, x->easy);
  limbo_flush(m);
  if (mc != CURLM_OK) return mc == CURLM_OUT_OF_MEMORY ? UV_ENOMEM : UV_EINVAL;
  x->m = m;
  braid__list_push(&m->xfers, &x->link);
  if (m->active++ == 0) multi_ref_all(m);
  return 0;
}

void braid__http_remove (struct http_xfer *x) {
  struct http_multi *m = x->m;
  if (m == NULL) return;
  x->m = NULL;
  braid__list_remove(&x->link);
  curl_multi_remove_handle(m->multi, x->easy);
  limbo_flush(m);
  if (--m->active == 0 && !m->detached) multi_ref_all(m);
}

void braid__http_unpause (struct http_xfer *x) {
  if (!x->paused || x->m == NULL) return;
  x->paused = 0;
  curl_easy_pause(x->easy, CURLPAUSE_CONT);   /* may write at once */
  limbo_flush(x->m);
}

#define C(name) [CURLE_##name] = #name
static const char *const code_names[] = {
    C(ABORTED_BY_CALLBACK),
    C(UNSUPPORTED_PROTOCOL),
    C(FAILED_INIT),
    C(URL_MALFORMAT),
    C(NOT_BUILT_IN),
    C(COULDNT_RESOLVE_PROXY),
    C(COULDNT_RESOLVE_HOST),
    C(COULDNT_CONNECT),
    C(WEIRD_SERVER_REPLY),
    C(REMOTE_ACCESS_DENIED),
    C(FTP_ACCEPT_FAILED),
    C(FTP_WEIRD_PASS_REPLY),
    C(FTP_ACCEPT_TIMEOUT),
    C(FTP_WEIRD_PASV_REPLY),
    C(FTP_WEIRD_227_FORMAT),
    C(FTP_CANT_GET_HOST),
    C(HTTP2),
    C(FTP_COULDNT_SET_TYPE),
    C(PARTIAL_FILE),
    C(FTP_COULDNT_RETR_FILE),
    C(QUOTE_ERROR),
    C(HTTP_RETURNED_ERROR),
    C(WRITE_ERROR),
    C(UPLOAD_FAILED),
    C(READ_ERROR),
    C(OUT_OF_MEMORY),
    C(OPERATION_TIMEDOUT),
    C(FTP_PORT_FAILED),
    C(FTP_COULDNT_USE_REST),
    C(RANGE_ERROR),
    C(HTTP_POST_ERROR),
    C(SSL_CONNECT_ERROR),
    C(BAD_DOWNLOAD_RESUME),
    C(FILE_COULDNT_READ_FILE),
    C(LDAP_CANNOT_BIND),
    C(LDAP_SEARCH_FAILED),
    C(FUNCTION_NOT_FOUND),
    C(BAD_FUNCTION_ARGUMENT),
    C(INTERFACE_FAILED),
    C(TOO_MANY_REDIRECTS),
    C(UNKNOWN_OPTION),
    C(SETOPT_OPTION_SYNTAX),
    C(GOT_NOTHING),
    C(SSL_ENGINE_NOTFOUND),
    C(SSL_ENGINE_SETFAILED),
    C(SEND_ERROR),
    C(RECV_ERROR),
    C(SSL_CERTPROBLEM),
    C(SSL_CIPHER),
    C(PEER_FAILED_VERIFICATION),
    C(BAD_CONTENT_ENCODING),
    C(FILESIZE_EXCEEDED),
    C(USE_SSL_FAILED),
    C(SEND_FAIL_REWIND),
    C(SSL_ENGINE_INITFAILED),
    C(LOGIN_DENIED),
    C(TFTP_NOTFOUND),
    C(TFTP_PERM),
    C(REMOTE_DISK_FULL),
    C(TFTP_ILLEGAL),
    C(TFTP_UNKNOWNID),
    C(REMOTE_FILE_EXISTS),
    C(TFTP_NOSUCHUSER),
    C(SSL_CACERT_BADFILE),
    C(REMOTE_FILE_NOT_FOUND),
    C(SSH),
    C(SSL_SHUTDOWN_FAILED),
    C(AGAIN),
    C(SSL_CRL_BADFILE),
    C(SSL_ISSUER_ERROR),
    C(FTP_PRET_FAILED),
    C(RTSP_CSEQ_ERROR),
    C(RTSP_SESSION_ERROR),
    C(FTP_BAD_FILE_LIST),
    C(CHUNK_FAILED),
    C(NO_CONNECTION_AVAILABLE),
    C(SSL_PINNEDPUBKEYNOTMATCH),
    C(SSL_INVALIDCERTSTATUS),
    C(HTTP2_STREAM),
    C(RECURSIVE_API_CALL),
    C(AUTH_ERROR),
    C(HTTP3),
    C(QUIC_CONNECT_ERROR),
    C(PROXY),
    C(SSL_CLIENTCERT),
    C(UNRECOVERABLE_POLL),
};
#undef C

const char *braid__http_code_name (CURLcode code) {
  if ((size_t) code < sizeof code_names / sizeof *code_names &&
      code_names[code] != NULL)
    return code_names[code];
  return "UNKNOWN";
}
