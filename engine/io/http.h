/*
** http.h: braid's HTTP client, shared by its files: http_multi.c (libcurl's
** multi handle on the engine's loop), http.c (transfers, braid.http.request
** and braid.http.open) and http_response.c (the response object).
*/
#ifndef BRAID_IO_HTTP_H
#define BRAID_IO_HTTP_H

#include <stdio.h>
#include <curl/curl.h>
#include "core/prim.h"

struct http_multi;

/* A growable byte buffer, charged against the engine's memory limit. */
struct http_buf {
  char *p;
  size_t len, off, cap;      /* off: bytes already handed to the script */
};

/* One transfer: a curl easy handle and what its callbacks collect. It is
** malloc'd; its owner is the call waiting for it (request, open) and then
** the response object (a stream), which frees it with http_xfer_free.
** Callbacks never run Lua: they store and resume `op`. */
struct http_xfer {
  struct braid_list link;    /* in the multi's transfers while added */
  struct http_multi *m;      /* NULL when not (or no longer) added */
  braid_engine_t *E;
  CURL *easy;
  braid_op_t *op;            /* the task waiting on it, or NULL */
  struct http_xfer **owner;  /* in the response object; cleared at free */
  struct curl_slist *req_headers;
  char *url;                 /* as requested (with the query), for errors */
  char method[16];           /* for the wait's trace label (cut short) */
  FILE *out, *in;            /* opts.output, opts.body_file */
  char *outbuf;              /* out's stdio buffer (charged), or NULL */
  char *out_tmp;             /* "tmp\0target": out is tmp, renamed over
                             ** target at success (http_options.c), or
                             ** NULL (out is written directly) */
  struct http_buf hdr, body;
  struct braid_charge charge;
  struct braid_charge hdr_charge;   /* req_headers' bytes (http_options.c) */
  size_t max_body, received;
  braid_resource_t res;      /* a stream: closed when its scope ends */
  CURLcode result;
  int out_err;               /* errno of a failed write to opts.output */
  unsigned char stream, finished, headers_done, paused, follow;
  unsigned char over_limit, nomem, location_seen, attached;
  unsigned char check;       /* opts.check: a status >= 400 keeps output */
  unsigned char to_file;     /* opts.output is set: no body in memory */
  unsigned char dirty;       /* set an option easy_common does not reset */
  unsigned char fresh;       /* its handle is new or was reset */
  unsigned char fresh_sock;  /* libcurl watched a socket not kept */
  char errbuf[CURL_ERROR_SIZE];
  char hdr_inline[448];      /* hdr's bytes until it outgrows them (the
                             ** struct stays under 1 KiB: glibc's small bins) */
};

/* The options a transfer from a reused handle could inherit are those
** set only when asked (headers, a body, a method other than GET, verify,
** proxy...): setting one marks the transfer dirty, and a dirty handle is
** curl_easy_reset before its next use (http_multi.c). Every transfer sets
** the rest itself (braid__http_easy_common), so a clean handle reused as
** it is ends up set exactly as a reset one. */
#define DIRTY(x) ((x)->dirty = 1)

/* http.c: sets what every transfer sets (URL, the callbacks' data,
** follow, max_redirects, timeouts, GET) on x's handle. */
void braid__http_easy_common(struct http_xfer *x, long redirects,
                             long timeout, long connect_timeout);

/* http_options.c: checks the options table at 1 and returns its url
** (anchored by the table); then applies every option to x (made from
** that url, its response object at 3), leaving the stack at 3. */
const char *braid__http_opts_url(lua_State *L, const char *fname);
/* The string at idx, refused (a usage error) with a control character or
** a NUL in it. */
const char *braid__http_url(lua_State *L, int idx, const char *fname);
void braid__http_opts_apply(lua_State *L, struct http_xfer *x,
                            const char *fname);

/* The engine's multi handle, made on first use on its current loop; NULL
** and *rc (a libuv code) when it cannot be made. */
struct http_multi *braid__http_multi(braid_engine_t *E, int *rc);

/* An easy handle, reused from the engine's multi when it keeps one (NULL
** when out of memory); and back to it, or cleaned up. *fresh is set when
** the handle is new or was curl_easy_reset (it needs http.c's constant
** options); a handle given back `clean` (its transfer set no option beyond
** those every transfer sets, and went well) is reused without a reset.
** The engine's state must be open (the handle's owner is collected
** there). */
CURL *braid__http_easy_new(braid_engine_t *E, int *fresh);
void braid__http_easy_free(braid_engine_t *E, CURL *e, int clean);

/* Starts x on m: 0, or a libuv-style code (nothing added). A fresh
** handle gets m's socket callbacks (a kept-alive connection's poll lives
** until libcurl closes its socket). */
int braid__http_add(struct http_multi *m, struct http_xfer *x);

/* Takes x off its multi (harmless when it is not on one): no libcurl
** callback for x runs afterwards. */
void braid__http_remove(struct http_xfer *x);

/* Lets a paused transfer go on (after the reader took data). */
void braid__http_unpause(struct http_xfer *x);

/* http.c: libcurl finished x with `result` (or the engine detached from
** its loop: CURLE_ABORTED_BY_CALLBACK); x is already off the multi. */
void braid__http_done(struct http_xfer *x, CURLcode result);

/* http.c: frees x (taking it off the multi, clearing its response
** object's pointer; a task reading it gets kind "closed"). */
void braid__http_xfer_free(struct http_xfer *x);

/* Did the ended transfer x fail (its error: braid__http_push_error)? */
int braid__http_failed(const struct http_xfer *x);

/* libcurl (7.88) builds a request's head (its request line, the script's
** headers and its own) in one buffer of at most 1 MiB, and past that fails
** the transfer with CURLE_OUT_OF_MEMORY, which read as "not enough memory"
** with memory to spare. braid refuses a URL and headers over HTTP_HEAD_MAX
** bytes up front (kind "limit"), leaving 16 KiB of the 1 MiB for the
** method, the version and libcurl's own headers (Host, Accept,
** Content-Length, Content-Type, Expect). */
#define HTTP_HEAD_MAX (((size_t) 1 << 20) - ((size_t) 16 << 10))
/* What url takes of the request's head: its length, and, when it holds a
** user name and password, what their Authorization header adds (base64:
** a third more). */
size_t braid__http_head_size(const char *url);

/* The url as messages show it: cut to HTTP_URL_SHOWN bytes and "..."
** (a 9 MB url made a 9 MB message); errors keep it whole in `url`. */
#define HTTP_URL_SHOWN 200
const char *braid__http_url_shown(const char *url,
                                  char buf[HTTP_URL_SHOWN + 4]);
/* Pushes the error of the failed transfer x. [-0, +1, m] */
void braid__http_push_error(lua_State *L, struct http_xfer *x,
                            const char *fname);

/* http_response.c: the response object (braid.HttpResponse). newres
** pushes a new one and returns its transfer slot. finish fills the
** object at idx from its ended transfer and frees it; start_stream fills
** it from the headers and makes the transfer a resource of the running
** task's scope; check raises kind "http" for a status of 400 or more.
** open_response sets the methods table as Response on the table at the
** top. */
struct http_xfer **braid__http_newres(lua_State *L);
void braid__http_finish(lua_State *L, int idx, const char *fname);
void braid__http_start_stream(lua_State *L, int idx);
void braid__http_check(lua_State *L, int idx, const char *fname);
void braid__http_open_response(lua_State *L);
/* Pops the request body (a string) into the response object at idx, which
** anchors it for libcurl to send from (CURLOPT_POSTFIELDS: no copy) while
** the transfer lives; the calls that free the transfer with a lua_State at
** hand let it go. [-1, +0, -] */
void braid__http_keep_body(lua_State *L, int idx);

/* curl's name of code without CURLE_ ("COULDNT_CONNECT"). */
const char *braid__http_code_name(CURLcode code);

#endif
