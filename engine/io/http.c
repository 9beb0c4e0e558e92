/*
** http.c: HTTP transfers (libcurl easy handles on the engine's multi,
** http_multi.c) and the calls that wait on them: braid.http.request, which
** returns the whole response, and braid.http.open, which returns as soon as
** the headers have arrived and leaves the body to res:read
** (http_response.c).
**
** Invariants:
** - A transfer (struct http_xfer) is owned by the call waiting for it
**   until its continuation or cancel hook runs, then, for open, by the
**   response object. Its owner frees it with http_xfer_free, which first
**   takes it off the multi: libcurl calls nothing of it afterwards, so a
**   cancelled or timed-out call leaves no callback that could touch its
**   task, and the connection of an unfinished transfer is closed.
** - libcurl's callbacks (write, header, read) only store into the
**   transfer and resume x->op; they never run Lua.
** - A stream's body buffer holds at most HTTP_HIGH bytes the script has
**   not read: the write callback pauses the transfer beyond that
**   (CURL_WRITEFUNC_PAUSE, which hands the same data again after
**   curl_easy_pause(CONT)), and res:read lets it go on. The buffer is
**   charged against the engine's memory limit.
** - The options are read once, at the call, into the easy handle and the
**   transfer (http_options.c); the script may change its table afterwards.
*/
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "io/http.h"

#define HTTP_HIGH ((size_t) 256 << 10)
#define HTTP_MAX_BODY ((size_t) 64 << 20)   /* request's default max_body */

void braid__http_xfer_free (struct http_xfer *x) {
  braid__http_remove(x);
  if (x->owner) *x->owner = NULL;
  if (x->op) {   /* a reader of a stream another task closed */
    braid_op_t *op = x->op;
    x->op = NULL;
    braid_pusherror(braid_op_state(op), "closed", NULL, "res:read: the "
                    "response is closed");
    braid_resume_error(op);
  }
  if (x->attached) braid_resource_remove(&x->res);
  /* reused as it is only after a clean transfer that went well */
  if (x->easy)
    braid__http_easy_free(x->E, x->easy, !x->dirty && x->finished &&
                                         x->result == CURLE_OK);
  curl_slist_free_all(x->req_headers);
  if (x->out) fclose(x->out);
  free(x->outbuf);   /* after fclose, which flushes it */
  if (x->out_tmp) {   /* not renamed: the transfer failed or was cancelled */
    unlink(x->out_tmp);
    free(x->out_tmp);
  }
  if (x->in) fclose(x->in);
  braid__charge_set(&x->charge, x->E, 0);
  braid__charge_set(&x->hdr_charge, x->E, 0);   /* req_headers are freed */
  if (x->hdr.p != x->hdr_inline) free(x->hdr.p);
  free(x->body.p);
  free(x->url);
  free(x);
}

/* Appends n bytes to b; 0, or UV_ENOMEM (b unchanged). Only the body is
** charged (the headers are bounded by libcurl). `first` is the size of
** its first allocation (the body's Content-Length when known: no
** regrowth). */
static int buf_add (struct http_xfer *x, struct http_buf *b, const char *p,
                    size_t n, size_t first) {
  if (b->off > 0 && b->off == b->len) b->off = b->len = 0;
  if (b->len + n > b->cap) {
    size_t cap = b->cap ? b->cap : first;
    char *q;
    while (cap < b->len + n) cap *= 2;
    if (b == &x->body && braid__charge_set(&x->charge, x->E, cap) != 0)
      return UV_ENOMEM;
    if (b->p == x->hdr_inline) {   /* outgrew the transfer's own bytes */
      if ((q = malloc(cap)) != NULL) memcpy(q, b->p, b->len);
    } else {
      q = realloc(b->p, cap);
    }
    if (q == NULL) {
      if (b == &x->body) braid__charge_set(&x->charge, x->E, b->cap);
      return UV_ENOMEM;
    }
    b->p = q;
    b->cap = cap;
  }
  memcpy(b->p + b->len, p, n);
  b->len += n;
  return 0;
}

/* Wakes the task waiting on x, if any. */
static void xfer_wake (struct http_xfer *x) {
  braid_op_t *op = x->op;
  if (op == NULL) return;
  x->op = NULL;
  braid_resume(op, 0);
}

static void xfer_headers_done (struct http_xfer *x) {
  if (x->headers_done) return;
  x->headers_done = 1;
  if (x->stream) xfer_wake(x);
}

/* The body buffer's first size: the Content-Length when the server gave
** one (and the body is held whole, under max_body), else 1 KiB. */
static size_t body_first (struct http_xfer *x) {
  curl_off_t cl = -1;
  if (x->body.cap > 0 || x->stream) return 1024;
  curl_easy_getinfo(x->easy, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &cl);
  return cl > 0 && (uint64_t) cl <= x->max_body && cl <= (curl_off_t) 64 << 20
             ? (size_t) cl : 1024;
}

static size_t write_cb (char *p, size_t size, size_t n, void *ud) {
  struct http_xfer *x = (struct http_xfer *) ud;
  (void) size;   /* always 1 */
  xfer_headers_done(x);
  if (x->received + n > x->max_body) {
    x->over_limit = 1;
    return 0;    /* CURLE_WRITE_ERROR; reported as the limit */
  }
  if (x->out) {
    if (fwrite(p, 1, n, x->out) != n) {
      x->out_err = errno ? errno : EIO;
      return 0;
    }
  } else {
    if (x->stream && x->body.len - x->body.off >= HTTP_HIGH) {
      x->paused = 1;
      return CURL_WRITEFUNC_PAUSE;   /* the same data comes again */
    }
    if (buf_add(x, &x->body, p, n, body_first(x)) != 0) {
      x->nomem = 1;
      return 0;
    }
  }
  x->received += n;
  if (x->stream) xfer_wake(x);
  return n;
}

/* Keeps the header block of the last response (a redirect or a 100
** Continue starts a new one) and tells open when the final one ended. */
static size_t header_cb (char *p, size_t size, size_t n, void *ud) {
  struct http_xfer *x = (struct http_xfer *) ud;
  (void) size;
  if (n >= 5 && memcmp(p, "HTTP/", 5) == 0) {
    x->hdr.len = 0;
    x->location_seen = 0;
  } else if (n <= 2 && (p[0] == '\r' || p[0] == '\n')) {
    long code = 0;
    curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &code);
    if (code >= 200 &&
        !(x->follow && x->location_seen && code >= 300 && code < 400))
      xfer_headers_done(x);
    return n;
  } else if (n >= 9 && (*p == 'l' || *p == 'L') &&
             strncasecmp(p, "location:", 9) == 0) {
    x->location_seen = 1;
  }
  if (buf_add(x, &x->hdr, p, n, 1024) != 0) {
    x->nomem = 1;
    return 0;
  }
  return n;
}

/* The transfer to opts.output's temporary file went well: it replaces the
** target, unless check is set and the status is 400 or more (the call
** raises then, and the target stays as it was). */
static void output_commit (struct http_xfer *x) {
  long code = 0;
  int rc = fclose(x->out);
  x->out = NULL;
  if (rc != 0) {
    x->out_err = errno ? errno : EIO;
    return;
  }
  curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &code);
  if (x->check && code >= 400) return;   /* freeing x removes it */
  if (rename(x->out_tmp, x->out_tmp + strlen(x->out_tmp) + 1) != 0) {
    x->out_err = errno ? errno : EIO;
    return;
  }
  free(x->out_tmp);
  x->out_tmp = NULL;
}

void braid__http_done (struct http_xfer *x, CURLcode result) {
  x->finished = 1;
  x->result = result;
  /* the end of opts.output is in its buffer: a failure to write it (a
  ** full disk) is the transfer's, not lost at fclose */
  if (x->out && result == CURLE_OK && !x->out_err && fflush(x->out) != 0)
    x->out_err = errno ? errno : EIO;
  if (x->out_tmp && result == CURLE_OK && !x->out_err) output_commit(x);
  xfer_wake(x);
}

/* The options every handle has from its first use on (after
** curl_easy_init or curl_easy_reset). */
static void easy_setup (CURL *e) {
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, write_cb);
  curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, header_cb);
  curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(e, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
}

void braid__http_easy_common (struct http_xfer *x, long redirects,
                              long timeout, long connect_timeout) {
  CURL *e = x->easy;
  curl_easy_setopt(e, CURLOPT_URL, x->url);
  curl_easy_setopt(e, CURLOPT_ERRORBUFFER, x->errbuf);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, x);
  curl_easy_setopt(e, CURLOPT_HEADERDATA, x);
  curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, (long) x->follow);
  curl_easy_setopt(e, CURLOPT_MAXREDIRS, redirects);
  curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, timeout);
  curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, connect_timeout);
  curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);   /* set_method may change it */
}

size_t braid__http_head_size (const char *url) {
  const char *a = strstr(url, "://"), *end, *p, *at = NULL;
  size_t len = strlen(url), user;
  /* a "://" after the path's start is not the scheme's */
  a = a && strcspn(url, "/?#") >= (size_t) (a - url) ? a + 3 : url;
  end = a + strcspn(a, "/?#");
  for (p = a; p < end; p++)
    if (*p == '@') at = p;
  if (at == NULL) return len;
  user = (size_t) (at - a);   /* "Authorization: Basic <base64>\r\n" */
  return len + user / 3 + 32;
}

/* A new transfer of url (x->url: a copy) with a handle set up, on the
** engine's multi but not yet added; pushes the response object, which
** owns the transfer (its __gc frees it if an option then raises). */
static struct http_xfer *xfer_alloc (lua_State *L, braid_engine_t *E,
                                     const char *url, int stream,
                                     const char *fname) {
  struct http_xfer *x;
  int fresh = 0;
  if ((x = braid__calloc(1, sizeof *x)) == NULL ||
      (x->easy = braid__http_easy_new(E, &fresh)) == NULL) {
    free(x);
    braid_error(L, "memory", NULL, "%s: not enough memory", fname);
  }
  x->E = E;
  x->stream = (unsigned char) stream;
  x->follow = 1;
  x->max_body = stream ? BRAID_NO_LIMIT : HTTP_MAX_BODY;
  x->hdr.p = x->hdr_inline;   /* most header blocks fit: no malloc */
  x->hdr.cap = sizeof x->hdr_inline;
  memcpy(x->method, "GET", 4);
  braid__list_init(&x->link);
  x->owner = braid__http_newres(L);
  *x->owner = x;
  if (fresh) easy_setup(x->easy);
  x->fresh = (unsigned char) fresh;   /* braid__http_add sets the rest */
  if ((x->url = braid__strdup(url)) == NULL)
    braid_error(L, "memory", NULL, "%s: not enough memory", fname);
  if (braid__http_head_size(url) > HTTP_HEAD_MAX) {   /* libcurl would
                                                      ** say out of memory */
    braid__push_limit_error(L, HTTP_HEAD_MAX, "url", "%s: a request head "
                            "of %I bytes for this URL is longer than the %I "
                            "libcurl can send (its limit is 1 MiB%s)", fname,
                            (lua_Integer) braid__http_head_size(url),
                            (lua_Integer) HTTP_HEAD_MAX,
                            braid__http_head_size(url) > strlen(url) ? "; "
                            "the URL's user name and password go in base64, "
                            "a third longer" : "");
    lua_error(L);
  }
  return x;
}

/* A new transfer from the options at 1 (a table; with url_only, the URL
** alone: a GET with every default, braid.http.get's common case, which
** reads no table). Pushes the response object (at 3). Raises on bad
** options. */
static struct http_xfer *xfer_new (lua_State *L, braid_engine_t *E,
                                   int stream, int url_only,
                                   const char *fname) {
  struct http_xfer *x;
  if (url_only && lua_type(L, 1) == LUA_TSTRING) {
    lua_settop(L, 2);
    x = xfer_alloc(L, E, braid__http_url(L, 1, fname), stream, fname);
    braid__http_easy_common(x, 10, 0, 0);
    return x;
  }
  x = xfer_alloc(L, E, braid__http_opts_url(L, fname), stream, fname);
  braid__http_opts_apply(L, x, fname);   /* http_options.c */
  lua_settop(L, 3);
  return x;
}

int braid__http_failed (const struct http_xfer *x) {
  return x->result != CURLE_OK || x->nomem || x->over_limit || x->out_err;
}

const char *braid__http_url_shown (const char *url,
                                  char buf[HTTP_URL_SHOWN + 4]) {
  if (strlen(url) <= HTTP_URL_SHOWN) return url;
  memcpy(buf, url, HTTP_URL_SHOWN);
  memcpy(buf + HTTP_URL_SHOWN, "...", 4);
  return buf;
}

/* Pushes the error of a transfer that failed: kind "memory", "limit"
** (max_body), "io" (writing opts.output) or "http" with `code` (libcurl's
** name: "COULDNT_CONNECT") and `url`. [-0, +1, m] */
void braid__http_push_error (lua_State *L, struct http_xfer *x,
                             const char *fname) {
  char cut[HTTP_URL_SHOWN + 4];
  const char *url = braid__http_url_shown(x->url, cut);
  if (x->nomem || x->result == CURLE_OUT_OF_MEMORY) {
    braid_pusherror(L, "memory", NULL, "%s: not enough memory", fname);
    return;
  }
  if (x->over_limit) {
    braid__push_limit_error(L, x->max_body, "max_body", "%s %s: body longer "
                            "than %I bytes (the max_body option raises the "
                            "limit)", fname, url,
                            (lua_Integer) x->max_body);
  } else if (x->out_err) {
    braid_pusherror(L, "io", braid__errname(-x->out_err), "%s %s: cannot write "
                    "the output file: %s", fname, url,
                    braid__strerror(-x->out_err));
  } else {
    braid_pusherror(L, "http", braid__http_code_name(x->result), "%s %s: %s",
                    fname, url, x->errbuf[0] ? x->errbuf :
                    curl_easy_strerror(x->result));
  }
  lua_pushstring(L, x->url);
  lua_setfield(L, -2, "url");
}

static int xfer_start (braid_op_t *op, void *ud) {
  struct http_xfer *x = (struct http_xfer *) ud;
  int rc;
  struct http_multi *m = braid__http_multi(braid_op_engine(op), &rc);
  char cut[HTTP_URL_SHOWN + 4];
  *(struct http_xfer **) braid_op_data(op) = x;
  braid_op_label(op, "http %s %s", x->method,
                 braid__http_url_shown(x->url, cut));
  if (m == NULL) return rc;
  if ((rc = braid__http_add(m, x)) != 0) return rc;
  x->op = op;
  return 0;
}

/* The call is cancelled (or its task abandoned): the transfer stops at
** once, its connection closes. */
static void xfer_cancel (braid_op_t *op) {
  struct http_xfer *x = *(struct http_xfer **) braid_op_data(op);
  x->op = NULL;
  braid__http_xfer_free(x);
}

/* Stack: opts (1), the function's name (2), the response object (3),
** check (4). */
static int request_k (lua_State *L, braid_op_t *op) {
  struct http_xfer *x = *(struct http_xfer **) braid_op_data(op);
  const char *fname = lua_tostring(L, 2);
  if (braid__http_failed(x)) {
    braid__http_push_error(L, x, fname);
    braid__http_xfer_free(x);   /* also clears the response's pointer */
    return lua_error(L);
  }
  lua_settop(L, 4);
  braid__http_finish(L, 3, fname);   /* frees x, or raises (x freed) */
  if (lua_toboolean(L, 4)) braid__http_check(L, 3, fname);
  lua_settop(L, 3);
  return 1;
}

/* Stack as request_k's. */
static int open_k (lua_State *L, braid_op_t *op) {
  struct http_xfer *x = *(struct http_xfer **) braid_op_data(op);
  const char *fname = lua_tostring(L, 2);
  if (!x->headers_done && braid__http_failed(x)) {
    braid__http_push_error(L, x, fname);
    braid__http_xfer_free(x);
    return lua_error(L);
  }
  lua_settop(L, 4);
  braid__http_start_stream(L, 3);   /* the scope's resource now */
  if (lua_toboolean(L, 4)) braid__http_check(L, 3, fname);
  lua_settop(L, 3);
  return 1;
}

/* [opts, fname] (fname: the name the script called, from lua/braid.lua's
** wrappers, for messages). */
static int http_call (lua_State *L, int stream, int url_only) {
  const char *fname = stream ? "braid.http.open" : "braid.http.request";
  braid_engine_t *E;
  struct http_xfer *x;
  if (lua_type(L, 2) == LUA_TSTRING) fname = lua_tostring(L, 2);
  E = braid_check_task(L, fname);
  lua_settop(L, 2);
  lua_pushstring(L, fname);
  lua_replace(L, 2);                                 /* 2: the name */
  fname = lua_tostring(L, 2);
  x = xfer_new(L, E, stream, url_only, fname);                 /* 3: the response */
  lua_pushboolean(L, x->check);   /* 4: as read once for the output file */
  braid_check_suspend(L, fname);
  if (stream)
    return braid_suspendk(L, "http.open", sizeof x, xfer_start, xfer_cancel,
                          x, open_k);
  return braid_suspendk(L, "http.request", sizeof x, xfer_start,
                        xfer_cancel, x, request_k);
}

/* braid.http._request(opts, [fname]) -> response (docs/API.md; the public
** braid.http.request, get and post are lua/braid.lua's). */
static int l_http_request (lua_State *L) {
  return http_call(L, 0, 0);
}

/* braid.http._get(url, [fname]) -> response: get(url) without options. */
static int l_http_get (lua_State *L) {
  return http_call(L, 0, 1);
}

/* braid.http._open(opts, [fname]) -> response whose body res:read reads. */
static int l_http_open (lua_State *L) {
  return http_call(L, 1, 0);
}

/* Sets braid.http on the braid table at the stack top. [-0, +0, m] */
void braid__open_http (lua_State *L) {
  static const luaL_Reg funcs[] = {
    {"_request", l_http_request},
    {"_get", l_http_get},
    {"_open", l_http_open},
    {NULL, NULL}
  };
  luaL_newlib(L, funcs);
  braid__http_open_response(L);   /* braid.http.Response: the methods */
  lua_setfield(L, -2, "http");
}
