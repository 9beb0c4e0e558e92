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
** - Nothing here blocks the loop on a file: FIFOs, sockets and devices
**   are refused before anything reads or writes them (file_open), and
**   output to a regular file goes to a temporary file that only a
**   successful transfer renames over it (http.c).
** - An option libcurl refuses raises (opt_refused): no request goes out
**   without what the script asked for.
*/
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "io/http.h"

#define HTTP_OUTBUF ((size_t) 256 << 10)    /* opts.output's write buffer */

static size_t read_cb (char *p, size_t size, size_t n, void *ud) {
  struct http_xfer *x = (struct http_xfer *) ud;
  size_t got = fread(p, size, n, x->in);
  if (got == 0 && ferror(x->in)) return CURL_READFUNC_ABORT;
  return got;
}

/* Rewinds opts.body_file: a 307 or 308 sends the body again. */
static int seek_cb (void *ud, curl_off_t offset, int origin) {
  struct http_xfer *x = (struct http_xfer *) ud;
  return fseeko(x->in, (off_t) offset, origin) == 0 ? CURL_SEEKFUNC_OK
                                                    : CURL_SEEKFUNC_FAIL;
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

static void headers_drop (struct http_xfer *x);

/* Refuses a header name that is not a token: a ':', a space or a line
** break in it would let the script write other headers, or a second
** request, into this one (libcurl sends the line as given). */
static void check_header_name (lua_State *L, struct http_xfer *x,
                               const char *name, size_t len,
                               const char *fname) {
  size_t i;
  for (i = 0; i < len && is_tchar((unsigned char) name[i]); i++) {}
  if (len > 0 && i == len) return;
  headers_drop(x);
  push_quoted(L, name, len);
  braid_usageerror(L, "%s: header name %s is not a valid token (letters, "
                   "digits and !#$%%&'*+-.^_`|~ expected)", fname,
                   lua_tostring(L, -1));
}

/* Frees the headers set so far, and their charge, before an error: a
** transfer that never starts holds nothing until its response is
** collected (a refused charge's collection runs no finalizer). */
static void headers_drop (struct http_xfer *x) {
  curl_slist_free_all(x->req_headers);
  x->req_headers = NULL;
  braid__charge_set(&x->hdr_charge, x->E, 0);
}

/* Adds header `name: value` (value at the top, a string or number, which
** it pops). A value may hold anything but CR, LF and NUL, which would end
** the header line (or, for NUL, cut it short) where the script did not;
** the error does not quote the value, which may be a secret. *head counts
** the bytes of the request's head so far: past HTTP_HEAD_MAX (http.h) the
** call raises kind "limit" before copying more. libcurl's copy of each
** line is charged against the memory limit (x->hdr_charge, released when
** x is freed): 400 values of 2 MiB had taken 800 MB that the limit never
** saw. Either error comes before anything is sent. The line is put
** together in C, not as a Lua string: the charge is then the only
** growth, so a script at its limit is refused by it, kind "memory". */
static void add_header (lua_State *L, struct http_xfer *x, const char *name,
                        size_t *head, const char *fname) {
  struct curl_slist *l;
  const char *v;
  char *p;
  size_t len, nlen = strlen(name), line;
  if (!lua_isstring(L, -1)) {
    headers_drop(x);
    braid_usageerror(L, "bad option 'headers' to '%s' (string values "
                     "expected)", fname);
  }
  v = lua_tolstring(L, -1, &len);
  if (strlen(v) != len || strpbrk(v, "\r\n")) {
    headers_drop(x);
    braid_usageerror(L, "%s: header \"%s\" has a line break or NUL in its "
                     "value (a value without CR, LF or NUL expected)", fname,
                     name);
  }
  line = nlen + 2 + len;   /* "name: value", sent with CR LF */
  if (line + 2 > HTTP_HEAD_MAX - *head) {
    headers_drop(x);
    braid__push_limit_error(L, HTTP_HEAD_MAX, "headers", "%s: headers and "
                            "URL longer than the %I bytes libcurl can send "
                            "(its limit on a request's head is 1 MiB)",
                            fname, (lua_Integer) HTTP_HEAD_MAX);
    lua_error(L);
  }
  *head += line + 2;
  if (braid__charge_set(&x->hdr_charge, x->E, x->hdr_charge.bytes + line +
                        1 + sizeof *l) != 0 ||
      (p = braid__malloc(line + 1)) == NULL) {
    headers_drop(x);
    braid_error(L, "memory", NULL, "%s: not enough memory", fname);
  }
  memcpy(p, name, nlen);
  memcpy(p + nlen, ": ", 2);
  memcpy(p + nlen + 2, v, len + 1);
  l = curl_slist_append(x->req_headers, p);
  free(p);
  if (l == NULL) {
    headers_drop(x);
    braid_error(L, "memory", NULL, "%s: not enough memory", fname);
  }
  x->req_headers = l;
  lua_pop(L, 1);
}

/* opts.headers: {name = value | {values}}. */
static void set_headers (lua_State *L, struct http_xfer *x,
                         const char *fname) {
  size_t head = braid__http_head_size(x->url);   /* the request line, Host
                                                 ** and Authorization */
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
    if (lua_type(L, -2) != LUA_TSTRING) {
      headers_drop(x);
      braid_usageerror(L, "bad option 'headers' to '%s' (string names "
                       "expected)", fname);
    }
    name = lua_tolstring(L, -2, &len);
    check_header_name(L, x, name, len, fname);
    if (lua_istable(L, -1)) {
      lua_Integer i, n = (lua_Integer) lua_rawlen(L, -1);
      for (i = 1; i <= n; i++) {
        lua_rawgeti(L, -1, i);
        add_header(L, x, name, &head, fname);
      }
      lua_pop(L, 1);
    } else {
      add_header(L, x, name, &head, fname);
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

/* Raises kind "io" for opts[key] naming `path`: errno e's name as `code`,
** `why` (or strerror(e)) in the message, and `path`. */
static void file_error (lua_State *L, const char *key, const char *path,
                        int e, const char *why, const char *fname) {
  braid_pusherror(L, "io", braid__errname(-e), "%s: cannot open %s '%s': %s",
                  fname, key, path, why ? why : strerror(e));
  lua_pushstring(L, path);
  lua_setfield(L, -2, "path");
  lua_error(L);
}

/* What a file that is not a regular one is, for file_error. */
static const char *file_kind (mode_t m) {
  if (S_ISFIFO(m)) return "it is a FIFO (a regular file expected)";
  if (S_ISSOCK(m)) return "it is a socket (a regular file expected)";
  if (S_ISCHR(m)) return "it is a character device (a regular file expected)";
  if (S_ISBLK(m)) return "it is a block device (a regular file expected)";
  return "not a regular file";
}

/* Opens path with flags | O_NONBLOCK, so that nothing blocks the loop (a
** FIFO without a writer would, in open or in every read: the whole engine,
** the request's own timeout included, froze), and checks with fstat that
** it is a regular file (or, with `chr`, a character device such as
** /dev/null); then clears O_NONBLOCK. Raises kind "io" (EISDIR, EINVAL for
** a FIFO, a socket or a device) naming key and path. */
static int file_open (lua_State *L, const char *key, const char *path,
                      int flags, int chr, const char *fname) {
  struct stat st;
  int fd = open(path, flags | O_NONBLOCK | O_CLOEXEC), e = 0, fl;
  if (fd < 0) {   /* a socket, or a FIFO without a reader: ENXIO */
    e = errno;
    if (e == ENXIO && stat(path, &st) == 0 && !S_ISREG(st.st_mode))
      file_error(L, key, path, EINVAL, file_kind(st.st_mode), fname);
    file_error(L, key, path, e, NULL, fname);
  }
  st.st_mode = 0;
  if (fstat(fd, &st) != 0) e = errno;
  else if (S_ISDIR(st.st_mode)) e = EISDIR;
  else if (!S_ISREG(st.st_mode) && !(chr && S_ISCHR(st.st_mode))) e = EINVAL;
  else if ((fl = fcntl(fd, F_GETFL)) < 0 ||
           fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) < 0) e = errno;
  if (e) {
    close(fd);
    file_error(L, key, path, e, e == EINVAL ? file_kind(st.st_mode) : NULL,
               fname);
  }
  return fd;
}

/* fdopen(fd, mode), or kind "memory" (fd closed). */
static FILE *file_stdio (lua_State *L, int fd, const char *mode,
                         const char *fname) {
  FILE *f = fdopen(fd, mode);
  if (f == NULL) {
    close(fd);
    braid_error(L, "memory", NULL, "%s: not enough memory", fname);
  }
  return f;
}

/* opts.body_file: a regular file, opened for reading, or NULL when absent.
** Files are braid.fs's capability: an embedded engine allowed the network
** but not BRAID_MOD_FS refuses them (and opts.ca_file, opts.output). */
static FILE *open_body_file (lua_State *L, const char *fname) {
  const char *path = opt_string(L, "body_file", fname);
  if (path == NULL) return NULL;
  opt_check_fs(L, "body_file", fname);
  return file_stdio(L, file_open(L, "body_file", path, O_RDONLY, 0, fname),
                    "rb", fname);
}

/* The temporary file opts.output is written to: "<dir>/.braid-<n>.part"
** beside `target`, created (O_EXCL) with `mode` (the umask applies).
** Stores "tmp\0target" in *names (malloc'd) and returns the descriptor,
** or -errno. */
static int output_tmp (const char *target, mode_t mode, char **names) {
  static unsigned counter;
  const char *slash = strrchr(target, '/');
  size_t dlen = slash ? (size_t) (slash - target) + 1 : 0;
  size_t tlen = strlen(target), cap = dlen + 48 + tlen + 1;
  char *p = malloc(cap);
  int i, fd = -EEXIST;
  if (p == NULL) return -ENOMEM;
  for (i = 0; i < 100 && fd == -EEXIST; i++) {
    unsigned long n = (unsigned long) uv_hrtime() ^
                      ((unsigned long) getpid() << 20) ^ ++counter;
    int len = snprintf(p, cap, "%.*s.braid-%lx.part", (int) dlen, target, n);
    memcpy(p + len + 1, target, tlen + 1);
    fd = open(p, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
    if (fd < 0) fd = -errno;
  }
  if (fd < 0) free(p);
  else *names = p;
  return fd;
}

/* Where the dangling symbolic link `path` leads: its target, read
** relative to the link's directory, followed through further links (at
** most 40, as the kernel does) to the first name that does not exist.
** Returns it malloc'd, or NULL and *err: ENOENT when path is no link (or
** stopped being one), ELOOP, or readlink's or malloc's errno. */
static char *link_target (const char *path, int *err) {
  char buf[PATH_MAX], *cur = strdup(path), *next;
  struct stat st;
  int hops;
  for (hops = 0; cur != NULL; hops++) {
    const char *slash;
    size_t dlen;
    ssize_t n;
    if (lstat(cur, &st) != 0) {
      if (hops > 0 && errno == ENOENT) return cur;   /* the target */
      break;
    }
    if (!S_ISLNK(st.st_mode)) {   /* made since the caller's stat */
      errno = ENOENT;
      break;
    }
    if (hops == 40) {
      errno = ELOOP;
      break;
    }
    if ((n = readlink(cur, buf, sizeof buf - 1)) < 0) break;
    buf[n] = '\0';
    slash = strrchr(cur, '/');
    dlen = buf[0] == '/' || slash == NULL ? 0 : (size_t) (slash - cur) + 1;
    if ((next = malloc(dlen + (size_t) n + 1)) != NULL) {
      memcpy(next, cur, dlen);
      memcpy(next + dlen, buf, (size_t) n + 1);
    }
    free(cur);
    cur = next;
  }
  *err = cur == NULL ? ENOMEM : errno;
  free(cur);
  return NULL;
}

/* opts.output. A regular file (or none yet) is not written in place: the
** body goes to a temporary file beside it (x->out_tmp), renamed over it
** when the transfer succeeds and removed when it fails or is cancelled
** (http.c), so a failed request leaves an existing file as it was. A
** symbolic link is followed, also a dangling one (its target is made). A
** character device (/dev/null) is written directly; anything else is
** refused (file_open). Nothing here blocks: FIFOs are refused on stat,
** and the open that checks the target is O_NONBLOCK. */
static void open_output (lua_State *L, struct http_xfer *x,
                         const char *fname) {
  const char *path = opt_string(L, "output", fname);
  char *real = NULL, *link = NULL, *cwd;
  const char *target = path;
  struct stat st;
  mode_t mode = 0666;
  int fd, exists, e;
  if (path == NULL) return;
  opt_check_fs(L, "output", fname);
  exists = stat(path, &st) == 0;
  if (!exists && errno != ENOENT) file_error(L, "output", path, errno, NULL,
                                             fname);
  /* a dangling link: its target is made, as open(2) with O_CREAT, curl
  ** and io.open do (renaming over the link replaced the link itself) */
  if (!exists) {
    if ((link = link_target(path, &e)) != NULL) target = link;
    else if (e != ENOENT) file_error(L, "output", path, e, NULL, fname);
  }
  if (exists && S_ISDIR(st.st_mode))
    file_error(L, "output", path, EISDIR, NULL, fname);
  if (exists && !S_ISREG(st.st_mode)) {
    if (!S_ISCHR(st.st_mode))
      file_error(L, "output", path, EINVAL, file_kind(st.st_mode), fname);
    x->out = file_stdio(L, file_open(L, "output", path, O_WRONLY, 1, fname),
                        "wb", fname);
    return;
  }
  if (exists) {   /* may the script write it? (opened, not truncated) */
    close(file_open(L, "output", path, O_WRONLY, 0, fname));
    mode = st.st_mode & 07777;
    /* a symbolic link keeps pointing where it did: its target is replaced */
    if ((real = realpath(path, NULL)) != NULL) target = real;
  }
  if (target[0] != '/' && (cwd = getcwd(NULL, 0)) != NULL) {
    /* absolute: the rename at the end does not depend on the cwd then */
    size_t clen = strlen(cwd), tlen = strlen(target);
    if ((real = malloc(clen + tlen + 2)) != NULL) {
      memcpy(real, cwd, clen);
      real[clen] = '/';
      memcpy(real + clen + 1, target, tlen + 1);
      target = real;
    }
    free(cwd);
  }
  fd = output_tmp(target, mode, &x->out_tmp);
  free(real);
  free(link);
  if (fd < 0) file_error(L, "output", path, -fd, NULL, fname);
  if (exists) (void) fchmod(fd, mode);   /* as the file it replaces */
  x->out = file_stdio(L, fd, "wb", fname);   /* on failure x->out_tmp goes
                                            ** when x is freed */
}

/* The request body: opts.body (a string; lua/braid.lua has turned a table
** into JSON and a function's chunks into one string) or opts.body_file. */
static void set_body (lua_State *L, struct http_xfer *x, const char *fname) {
  CURL *e = x->easy;
  const char *body;
  size_t len;
  lua_getfield(L, 1, "body");
  if (!lua_isnil(L, -1)) {
    /* both: which was meant? (libcurl sent a mix of the two) */
    if (lua_getfield(L, 1, "body_file") != LUA_TNIL)
      braid_usageerror(L, "%s: give 'body' or 'body_file', not both", fname);
    lua_pop(L, 1);
    if (lua_type(L, -1) != LUA_TSTRING)
      braid_usageerror(L, "bad option 'body' to '%s' (string, table or "
                       "function expected, got %s)", fname,
                       luaL_typename(L, -1));
    /* sent from the string itself, not a copy (COPYPOSTFIELDS made one
    ** the memory limit never saw: 150 POSTs of one 2 MiB string took 300
    ** MB): the response object anchors it while the transfer lives */
    body = lua_tolstring(L, -1, &len);
    lua_pushvalue(L, -1);
    braid__http_keep_body(L, 3);
    DIRTY(x);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t) len);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, body);
  }
  lua_pop(L, 1);
  if ((x->in = open_body_file(L, fname)) != NULL) {
    struct stat st;
    curl_off_t size = -1;
    if (fstat(fileno(x->in), &st) == 0 && S_ISREG(st.st_mode))
      size = (curl_off_t) st.st_size;
    DIRTY(x);
    curl_easy_setopt(e, CURLOPT_POST, 1L);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, size);
    curl_easy_setopt(e, CURLOPT_READFUNCTION, read_cb);
    curl_easy_setopt(e, CURLOPT_READDATA, x);
    /* a 307 or 308 sends the body again: libcurl rewinds it */
    curl_easy_setopt(e, CURLOPT_SEEKFUNCTION, seek_cb);
    curl_easy_setopt(e, CURLOPT_SEEKDATA, x);
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

/* libcurl refused an option the script set (a string over its 8 MB
** limit, an HTTP version it was built without): kind "http" with libcurl's
** code, naming the option, rather than a request sent without it. */
static void opt_refused (lua_State *L, CURLcode rc, const char *key,
                         const char *fname) {
  if (rc == CURLE_OK) return;
  if (rc == CURLE_OUT_OF_MEMORY)
    braid_error(L, "memory", NULL, "%s: not enough memory", fname);
  braid_error(L, "http", braid__http_code_name(rc), "%s: libcurl refused "
              "option '%s': %s", fname, key, curl_easy_strerror(rc));
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
      opt_refused(L, curl_easy_setopt(x->easy, CURLOPT_HTTP_VERSION,
                                      values[i]), "http_version", fname);
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
    struct stat st;
    opt_check_fs(L, "ca_file", fname);
    /* libcurl reads it on the loop thread: a FIFO would block it */
    if (stat(s, &st) == 0 && !S_ISREG(st.st_mode))
      file_error(L, "ca_file", s, S_ISDIR(st.st_mode) ? EISDIR : EINVAL,
                 S_ISDIR(st.st_mode) ? NULL : file_kind(st.st_mode), fname);
    DIRTY(x);
    opt_refused(L, curl_easy_setopt(e, CURLOPT_CAINFO, s), "ca_file", fname);
  }
  if ((s = opt_string(L, "proxy", fname)) != NULL) {
    DIRTY(x);
    opt_refused(L, curl_easy_setopt(e, CURLOPT_PROXY, s), "proxy", fname);
  }
  set_version(L, x, fname);
  x->max_body = braid__opt_limit(L, 1, "max_body", x->max_body, fname);
  set_headers(L, x, fname);
  set_body(L, x, fname);
  set_method(L, x, fname);
  x->check = (unsigned char) opt_bool(L, "check", 0);
  open_output(L, x, fname);
  if (x->out) {
    x->to_file = 1;
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
