/*
** http_options.c: the options of braid.http.request and braid.http.open
** (docs/API.md), read once, at the call, into the transfer and its easy
** handle (http.c makes both); the script may change its table afterwards.
** Bad options are usage errors naming the function the script called.
**
** Invariants:
** - Setting anything beyond what every transfer sets
**   (braid__http_easy_common) marks the transfer dirty (DIRTY, http.h):
**   its handle is reset before it serves another request, so no option
**   carries over.
** - A file option (output, body_file, ca_file) needs BRAID_MOD_FS.
*/
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include "io/http.h"

#define HTTP_OUTBUF ((size_t) 256 << 10)    /* opts.output's write buffer */

static size_t read_cb (char *p, size_t size, size_t n, void *ud) {
  struct http_xfer *x = (struct http_xfer *) ud;
  size_t got = fread(p, size, n, x->in);
  if (got == 0 && ferror(x->in)) return CURL_READFUNC_ABORT;
  return got;
}

static const char *const http_options[] = {
  "method", "url", "headers", "body", "body_file", "query", "timeout",
  "connect_timeout", "follow", "max_redirects", "verify", "ca_file",
  "proxy", "http_version", "max_body", "output", "check", "compressed",
  NULL
};

/* opts[key] as a string or NULL; a usage error for anything else. */
static const char *opt_string (lua_State *L, const char *key,
                               const char *fname) {
  const char *s;
  lua_getfield(L, 1, key);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    return NULL;
  }
  if (lua_type(L, -1) != LUA_TSTRING)
    braid_usageerror(L, "bad option '%s' to '%s' (string expected, got %s)",
                     key, fname, luaL_typename(L, -1));
  if ((s = braid__cstring(L, -1)) == NULL)
    braid_usageerror(L, "bad option '%s' to '%s' (contains a zero byte)",
                     key, fname);
  lua_pop(L, 1);   /* opts anchors it during the call */
  return s;
}

static int opt_bool (lua_State *L, const char *key, int def) {
  int v;
  if (lua_getfield(L, 1, key) == LUA_TNIL) v = def;
  else v = lua_toboolean(L, -1);
  lua_pop(L, 1);
  return v;
}

static long opt_ms (lua_State *L, const char *key, const char *fname) {
  uint64_t ns = braid__opt_seconds(L, 1, key, BRAID_NEVER, fname);
  if (ns == BRAID_NEVER) return 0;         /* libcurl: no timeout */
  return ns < 1000000 ? 1 : (long) (ns / 1000000);
}

/* Pushes s[0..len) quoted as Lua's %q would ("X\r\nY"), cut after 40
** bytes: a bad header is named in its error without the error itself
** carrying raw line breaks, and a huge one does not make a huge message. */
static void push_quoted (lua_State *L, const char *s, size_t len) {
  luaL_Buffer b;
  size_t i, n = len > 40 ? 40 : len;
  luaL_buffinit(L, &b);
  luaL_addchar(&b, '"');
  for (i = 0; i < n; i++) {
    unsigned char c = (unsigned char) s[i];
    if (c == '"' || c == '\\') {
      luaL_addchar(&b, '\\');
      luaL_addchar(&b, (char) c);
    } else if (c == '\r') {
      luaL_addstring(&b, "\\r");
    } else if (c == '\n') {
      luaL_addstring(&b, "\\n");
    } else if (c < 0x20 || c >= 0x7f) {
      char esc[8];   /* three digits when a digit follows, as %q */
      int digit = i + 1 < len && s[i + 1] >= '0' && s[i + 1] <= '9';
      snprintf(esc, sizeof esc, digit ? "\\%03u" : "\\%u", (unsigned) c);
      luaL_addstring(&b, esc);
    } else {
      luaL_addchar(&b, (char) c);
    }
  }
  luaL_addchar(&b, '"');
  if (n < len) luaL_addstring(&b, "...");
  luaL_pushresult(&b);
}

/* Is c a tchar of RFC 9110's token (a header name's characters)? */
static int is_tchar (unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
         (c >= '0' && c <= '9') || (c != 0 && strchr("!#$%&'*+-.^_`|~", c));
}

/* Refuses a header name that is not a token: a ':', a space or a line
** break in it would let the script write other headers, or a second
** request, into this one (libcurl sends the line as given). */
static void check_header_name (lua_State *L, const char *name, size_t len,
                               const char *fname) {
  size_t i;
  for (i = 0; i < len && is_tchar((unsigned char) name[i]); i++) {}
  if (len > 0 && i == len) return;
  push_quoted(L, name, len);
  braid_usageerror(L, "%s: header name %s is not a valid token (letters, "
                   "digits and !#$%%&'*+-.^_`|~ expected)", fname,
                   lua_tostring(L, -1));
}

/* Adds header `name: value` (value at the top, a string or number, which
** it pops). A value may hold anything but CR, LF and NUL, which would end
** the header line (or, for NUL, cut it short) where the script did not;
** the error does not quote the value, which may be a secret. */
static void add_header (lua_State *L, struct http_xfer *x, const char *name,
                        const char *fname) {
  struct curl_slist *l;
  const char *v;
  size_t len;
  if (!lua_isstring(L, -1))
    braid_usageerror(L, "bad option 'headers' to '%s' (string values "
                     "expected)", fname);
  v = lua_tolstring(L, -1, &len);
  if (strlen(v) != len || strpbrk(v, "\r\n"))
    braid_usageerror(L, "%s: header \"%s\" has a line break or NUL in its "
                     "value (a value without CR, LF or NUL expected)", fname,
                     name);
  lua_pushfstring(L, "%s: %s", name, v);
  if ((l = curl_slist_append(x->req_headers, lua_tostring(L, -1))) == NULL)
    braid_error(L, "memory", NULL, "%s: not enough memory", fname);
  x->req_headers = l;
  lua_pop(L, 2);
}

/* opts.headers: {name = value | {values}}. */
static void set_headers (lua_State *L, struct http_xfer *x,
                         const char *fname) {
  if (lua_getfield(L, 1, "headers") == LUA_TNIL) {
    lua_pop(L, 1);
    return;
  }
  if (!lua_istable(L, -1))
    braid_usageerror(L, "bad option 'headers' to '%s' (table expected)",
                     fname);
  lua_pushnil(L);
  while (lua_next(L, -2)) {
    const char *name;
    size_t len;
    if (lua_type(L, -2) != LUA_TSTRING)
      braid_usageerror(L, "bad option 'headers' to '%s' (string names "
                       "expected)", fname);
    name = lua_tolstring(L, -2, &len);
    check_header_name(L, name, len, fname);
    if (lua_istable(L, -1)) {
      lua_Integer i, n = (lua_Integer) lua_rawlen(L, -1);
      for (i = 1; i <= n; i++) {
        lua_rawgeti(L, -1, i);
        add_header(L, x, name, fname);
      }
      lua_pop(L, 1);
    } else {
      add_header(L, x, name, fname);
    }
  }
  lua_pop(L, 1);
  if (x->req_headers) {
    DIRTY(x);
    curl_easy_setopt(x->easy, CURLOPT_HTTPHEADER, x->req_headers);
  }
}

static void opt_check_fs (lua_State *L, const char *key, const char *fname) {
  if (!(braid__engine_modules(L) & BRAID_MOD_FS))
    braid_usageerror(L, "bad option '%s' to '%s' (files are not allowed in "
                     "this engine: it lacks BRAID_MOD_FS)", key, fname);
}

/* Opens opts[key] (a path) as a file in `mode`, or NULL when absent;
** raises kind "io" with the errno's name when it cannot. Files are
** braid.fs's capability: an embedded engine allowed the network but not
** BRAID_MOD_FS refuses them (and opts.ca_file). */
static FILE *opt_file (lua_State *L, const char *key, const char *mode,
                       const char *fname) {
  const char *path = opt_string(L, key, fname);
  FILE *f;
  struct stat st;
  if (path == NULL) return NULL;
  opt_check_fs(L, key, fname);
  /* fopen opens a directory for reading: its read would fail later, inside
  ** libcurl, as an "http" error ("aborted by callback") */
  if ((f = fopen(path, mode)) == NULL ||
      (fstat(fileno(f), &st) == 0 && S_ISDIR(st.st_mode))) {
    int e = f ? EISDIR : errno;
    if (f) fclose(f);
    braid_pusherror(L, "io", braid__errname(-e), "%s: cannot open %s '%s': %s",
                    fname, key, path, strerror(e));
    lua_pushstring(L, path);
    lua_setfield(L, -2, "path");
    lua_error(L);
  }
  return f;
}

/* The request body: opts.body (a string; lua/braid.lua has turned a table
** into JSON and a function's chunks into one string) or opts.body_file. */
static void set_body (lua_State *L, struct http_xfer *x, const char *fname) {
  CURL *e = x->easy;
  const char *body;
  size_t len;
  lua_getfield(L, 1, "body");
  if (!lua_isnil(L, -1)) {
    if (lua_type(L, -1) != LUA_TSTRING)
      braid_usageerror(L, "bad option 'body' to '%s' (string, table or "
                       "function expected, got %s)", fname,
                       luaL_typename(L, -1));
    body = lua_tolstring(L, -1, &len);
    DIRTY(x);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t) len);
    if (curl_easy_setopt(e, CURLOPT_COPYPOSTFIELDS, body) != CURLE_OK)
      braid_error(L, "memory", NULL, "%s: not enough memory", fname);
  }
  lua_pop(L, 1);
  if ((x->in = opt_file(L, "body_file", "rb", fname)) != NULL) {
    struct stat st;
    curl_off_t size = -1;
    if (fstat(fileno(x->in), &st) == 0 && S_ISREG(st.st_mode))
      size = (curl_off_t) st.st_size;
    DIRTY(x);
    curl_easy_setopt(e, CURLOPT_POST, 1L);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, size);
    curl_easy_setopt(e, CURLOPT_READFUNCTION, read_cb);
    curl_easy_setopt(e, CURLOPT_READDATA, x);
  }
}

/* opts.method; a body without one is a POST. Runs after set_body. */
static void set_method (lua_State *L, struct http_xfer *x,
                        const char *fname) {
  const char *m = opt_string(L, "method", fname);
  int has_body = x->in != NULL ||
                 (lua_getfield(L, 1, "body"), !lua_isnil(L, -1));
  lua_pop(L, x->in == NULL);
  if (m == NULL) m = has_body ? "POST" : "GET";
  {   /* a token, as RFC 9110 says: nothing that could split the line */
    const char *c = m;
    while (is_tchar((unsigned char) *c)) c++;
    if (*m == '\0' || *c != '\0')
      braid_usageerror(L, "bad option 'method' to '%s' (a method name "
                       "expected)", fname);
  }
  snprintf(x->method, sizeof x->method, "%s", m);
  if (has_body || strcmp(m, "GET") != 0) DIRTY(x);
  if (strcmp(m, "HEAD") == 0) {
    curl_easy_setopt(x->easy, CURLOPT_NOBODY, 1L);
  } else if (!has_body) {
    if (strcmp(m, "POST") == 0) {
      curl_easy_setopt(x->easy, CURLOPT_POSTFIELDSIZE, 0L);
      curl_easy_setopt(x->easy, CURLOPT_POSTFIELDS, "");
    } else if (strcmp(m, "GET") != 0) {
      curl_easy_setopt(x->easy, CURLOPT_CUSTOMREQUEST, m);
    }
  } else if (strcmp(m, "POST") != 0) {
    curl_easy_setopt(x->easy, CURLOPT_CUSTOMREQUEST, m);
  }
}

/* opts.http_version: "1.0", "1.1", "2" (over TLS, else 1.1), "3". */
static void set_version (lua_State *L, struct http_xfer *x,
                         const char *fname) {
  static const char *const names[] = {"1.0", "1.1", "2", "3", NULL};
  static const long values[] = {CURL_HTTP_VERSION_1_0, CURL_HTTP_VERSION_1_1,
                                CURL_HTTP_VERSION_2TLS, CURL_HTTP_VERSION_3};
  const char *v = opt_string(L, "http_version", fname);
  int i;
  if (v == NULL) return;
  for (i = 0; names[i]; i++)
    if (strcmp(v, names[i]) == 0) {
      DIRTY(x);
      curl_easy_setopt(x->easy, CURLOPT_HTTP_VERSION, values[i]);
      return;
    }
  braid_usageerror(L, "bad option 'http_version' to '%s' (\"1.0\", \"1.1\", "
                   "\"2\" or \"3\" expected)", fname);
}

/* A URL with a control character or a NUL is refused here: libcurl would
** refuse it with a message that prints it raw (line breaks and all), and
** a NUL would cut the copy short, fetching another URL than the script's. */
static const char *check_url (lua_State *L, const char *url, size_t len,
                              const char *fname) {
  size_t i;
  for (i = 0; i < len; i++)
    if ((unsigned char) url[i] < 0x20 || url[i] == 0x7f) {
      push_quoted(L, url, len);
      braid_usageerror(L, "%s: URL %s has a control character or NUL at "
                       "byte %d (percent-encode it)", fname,
                       lua_tostring(L, -1), (int) i + 1);
    }
  return url;
}

const char *braid__http_url (lua_State *L, int idx, const char *fname) {
  size_t len;
  const char *url = lua_tolstring(L, idx, &len);
  return check_url(L, url, len, fname);
}

const char *braid__http_opts_url (lua_State *L, const char *fname) {
  const char *url;
  braid__check_type(L, 1, LUA_TTABLE, fname);
  braid__check_options(L, 1, fname, http_options);
  if ((url = opt_string(L, "url", fname)) == NULL)
    braid_usageerror(L, "bad option 'url' to '%s' (string expected, got "
                     "nil)", fname);
  return check_url(L, url, strlen(url), fname);   /* opts anchors it */
}

void braid__http_opts_apply (lua_State *L, struct http_xfer *x,
                             const char *fname) {
  CURL *e = x->easy;
  const char *s;
  long redirects;
  double d;
  /* Off by default, as curl's --compressed: asking costs a local or
  ** fast peer more than it saves (W7: a third of braid's time). */
  if (opt_bool(L, "compressed", 0)) {
    DIRTY(x);
    curl_easy_setopt(e, CURLOPT_ACCEPT_ENCODING, "");
  }
  x->follow = (unsigned char) opt_bool(L, "follow", 1);
  d = braid__opt_number(L, 1, "max_redirects", 10, fname);
  redirects = d > 1000 ? 1000 : (long) d;
  braid__http_easy_common(x, redirects, opt_ms(L, "timeout", fname),
                          opt_ms(L, "connect_timeout", fname));
  if (!opt_bool(L, "verify", 1)) {
    DIRTY(x);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 0L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 0L);
  }
  if ((s = opt_string(L, "ca_file", fname)) != NULL) {
    opt_check_fs(L, "ca_file", fname);
    DIRTY(x);
    curl_easy_setopt(e, CURLOPT_CAINFO, s);
  }
  if ((s = opt_string(L, "proxy", fname)) != NULL) {
    DIRTY(x);
    curl_easy_setopt(e, CURLOPT_PROXY, s);
  }
  set_version(L, x, fname);
  x->max_body = braid__opt_limit(L, 1, "max_body", x->max_body, fname);
  set_headers(L, x, fname);
  set_body(L, x, fname);
  set_method(L, x, fname);
  x->out = opt_file(L, "output", "wb", fname);
  if (x->out) {
    DIRTY(x);
    if (lua_getfield(L, 1, "max_body") == LUA_TNIL)
      x->max_body = BRAID_NO_LIMIT;   /* a file is not held in memory */
    /* a download: fewer, larger reads and writes per loop iteration
    ** (libcurl hands the write callback 16 KiB at most; stdio's own 4 KiB
    ** buffer made that two write(2)s, a buffer this size makes one per
    ** 256 KiB). Without memory for it, stdio's buffer does. */
    curl_easy_setopt(e, CURLOPT_BUFFERSIZE, (long) HTTP_OUTBUF);
    if (braid__charge_set(&x->charge, x->E, HTTP_OUTBUF) == 0 &&
        (x->outbuf = malloc(HTTP_OUTBUF)) != NULL)
      setvbuf(x->out, x->outbuf, _IOFBF, HTTP_OUTBUF);
  }
  lua_settop(L, 3);
}
