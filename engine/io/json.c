/*
** json.c: braid.json, braid's own JSON codec (RFC 8259). It replaced
** lua-cjson 2.1.0, which writes numbers in at most 14 digits and has no
** integers (docs/internals.md, "braid.json"). It uses only the Lua API
** (and braid.h's errors): no engine state, so it is there in every engine
** and every worker, whatever its modules.
**
** - Encoding: Lua integers exactly; a float in the fewest digits that
**   read back as the same double, an integral one with ".0" so that it
**   decodes as a float again; NaN and the infinities refused. A table with
**   keys 1..n and no other is an array, an empty one {}, any other an
**   object with string or number keys. Tables are read raw (lua_next,
**   lua_rawgeti): no metamethod runs.
** - Decoding: strict; integers that fit lua_Integer become integers, any
**   other number a float; strings are checked UTF-8; \u escapes with
**   surrogate pairs.
** - The output (and a decoded string that has escapes) is built in one
**   buffer, a userdata at a fixed stack slot that is replaced by a larger
**   one as it grows: its memory comes from the state's allocator (so it
**   counts against the engine's memory limit, and an allocation that
**   fails is Lua's ordinary memory error), and an error raised anywhere
**   in between leaves nothing to free but garbage. (luaL_Buffer would
**   need its box at the stack top at every operation, which a recursive
**   walk that keeps its tables and keys on the stack cannot give.)
** - Nesting is bounded (JSON_MAXDEPTH) both ways, which also stops a table
**   that contains itself, and bounds the C recursion.
*/
#include <locale.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "core/prim.h"

#define JSON_MAXDEPTH 1000

/* The longest text: a Lua string's length is a size_t that also fits a
** lua_Integer. */
#define JSON_MAXSIZE \
  (sizeof(size_t) < sizeof(lua_Integer) ? ~(size_t) 0 \
                                        : (size_t) LUA_MAXINTEGER)

/* The bytes that go as they are, inside a JSON string both ways: printable
** ASCII but '"' and '\\' (0x7f too: JSON lets DEL through). The others are
** escaped, or are the start of a UTF-8 sequence to check. */
static const unsigned char plain[256] = {
  0,0,0,0,0,0,0,0, 0,0,0,0,0,0,0,0, 0,0,0,0,0,0,0,0, 0,0,0,0,0,0,0,0,
  1,1,0,1,1,1,1,1, 1,1,1,1,1,1,1,1, 1,1,1,1,1,1,1,1, 1,1,1,1,1,1,1,1,
  1,1,1,1,1,1,1,1, 1,1,1,1,1,1,1,1, 1,1,1,1,1,1,1,1, 1,1,1,1,0,1,1,1,
  1,1,1,1,1,1,1,1, 1,1,1,1,1,1,1,1, 1,1,1,1,1,1,1,1, 1,1,1,1,1,1,1,1,
};

/* The length of the UTF-8 sequence at s (n bytes left, n >= 1, *s >=
** 0x80), or 0 when it is not one: RFC 3629's, so no overlong form, no
** surrogate (U+D800..U+DFFF), nothing past U+10FFFF. */
static size_t utf8_len (const unsigned char *s, size_t n) {
  unsigned char c = s[0], lo = 0x80, hi = 0xbf;
  size_t len, i;
  if (c >= 0xc2 && c <= 0xdf) len = 2;
  else if (c >= 0xe0 && c <= 0xef) {
    len = 3;
    if (c == 0xe0) lo = 0xa0;
    else if (c == 0xed) hi = 0x9f;
  }
  else if (c >= 0xf0 && c <= 0xf4) {
    len = 4;
    if (c == 0xf0) lo = 0x90;
    else if (c == 0xf4) hi = 0x8f;
  }
  else return 0;
  if (n < len || s[1] < lo || s[1] > hi) return 0;
  for (i = 2; i < len; i++)
    if (s[i] < 0x80 || s[i] > 0xbf) return 0;
  return len;
}

/* ---- the buffer ---- */

typedef struct {
  lua_State *L;
  int slot;           /* the stack index of the userdata holding p */
  char *p;
  size_t n, cap;
} Buf;

static void buf_init (lua_State *L, Buf *b, size_t cap) {
  b->L = L;
  b->p = (char *) lua_newuserdatauv(L, cap, 0);
  b->slot = lua_gettop(L);
  b->n = 0;
  b->cap = cap;
}

/* Makes room for `need` more bytes: a userdata twice as large (or as
** large as needed) takes the old one's slot; the old one is garbage. */
static char *buf_grow (Buf *b, size_t need) {
  size_t cap = b->cap;
  char *p;
  if (need > JSON_MAXSIZE - b->n)
    braid_error(b->L, "memory", NULL, "braid.json: not enough memory "
                "(a text of more than %I bytes)", (lua_Integer) JSON_MAXSIZE);
  while (cap - b->n < need)
    cap = cap <= JSON_MAXSIZE / 2 ? cap * 2 : JSON_MAXSIZE;
  luaL_checkstack(b->L, 1, NULL);
  p = (char *) lua_newuserdatauv(b->L, cap, 0);
  memcpy(p, b->p, b->n);
  lua_replace(b->L, b->slot);
  b->p = p;
  b->cap = cap;
  return p + b->n;
}

/* A pointer to room for k more bytes (the caller then adds to b->n). */
#define buf_room(b, k) \
  ((b)->cap - (b)->n >= (k) ? (b)->p + (b)->n : buf_grow((b), (k)))

static void buf_add (Buf *b, const char *s, size_t len) {
  memcpy(buf_room(b, len), s, len);
  b->n += len;
}

static void buf_addc (Buf *b, char c) {
  *buf_room(b, 1) = c;
  b->n++;
}

/* ---- numbers as text ---- */

/* Writes integer i in decimal at buf (at least 24 bytes); its length. */
static size_t int_text (char *buf, lua_Integer i) {
  char tmp[24];
  size_t n = 0, len = 0;
  lua_Unsigned u = (lua_Unsigned) i;
  if (i < 0) {
    buf[len++] = '-';
    u = 0u - u;                   /* math.mininteger too */
  }
  do {
    tmp[n++] = (char) ('0' + u % 10);
    u /= 10;
  } while (u != 0);
  while (n > 0) buf[len++] = tmp[--n];
  return len;
}

/* The common case without printf: x (finite) as a decimal with k <= 15
** fraction digits, the fewest that read back as x, when that decimal has
** at most 15 digits (below 2^50: x * 10^k is then within 1/4 of the
** integer it should be). y / 10^k is IEEE's correctly rounded
** quotient of two exact doubles, the nearest double to the decimal, as
** strtod's is, so the text reads back as x exactly when it equals x. Its
** length, or 0 when x is not such a number (printf then). */
static size_t float_short (char *buf, double x) {
  static const double p10[] = {1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8,
                               1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15};
  double ax = fabs(x), y;
  char digits[24];
  size_t k, lo = 0, hi = sizeof p10 / sizeof *p10 - 1, nd, len = 0, i;
  /* When k digits read back, k + 1 do too (the same decimal): try the
  ** most that stay below 2^50, then search down for the fewest. */
  while (nearbyint(ax * p10[hi]) >= 0x1p50)
    if (hi-- == 0) return 0;
  if (nearbyint(ax * p10[hi]) / p10[hi] != ax) return 0;
  while (lo < hi) {
    k = (lo + hi) / 2;
    if (nearbyint(ax * p10[k]) / p10[k] == ax) hi = k;
    else lo = k + 1;
  }
  k = lo;
  y = nearbyint(ax * p10[k]);
  nd = int_text(digits, (lua_Integer) y);
  if (signbit(x)) buf[len++] = '-';
  if (nd <= k) {                       /* 0.000ddd */
    buf[len++] = '0';
    buf[len++] = '.';
    for (i = nd; i < k; i++) buf[len++] = '0';
    memcpy(buf + len, digits, nd);
    len += nd;
  }
  else {
    memcpy(buf + len, digits, nd - k);
    len += nd - k;
    buf[len++] = '.';
    if (k == 0) buf[len++] = '0';      /* integral: 3.0 */
    else {
      memcpy(buf + len, digits + nd - k, k);
      len += k;
    }
  }
  buf[len] = '\0';
  return len;
}

/* Writes the decimal sign dig[0..n) x 10^(e10 - n + 1) at buf as %g would
** (positional for exponents -4..16, else d.ddde+XX), with `point`, and
** ".0" after an integral one. Its length. */
static size_t decimal_text (char *buf, int neg, const char *dig, int n,
                            int e10, char point) {
  size_t len = 0;
  int i;
  if (neg) buf[len++] = '-';
  if (e10 >= -4 && e10 < 17) {
    if (e10 < 0) {                                  /* 0.000ddd */
      buf[len++] = '0';
      buf[len++] = point;
      for (i = -1; i > e10; i--) buf[len++] = '0';
      for (i = 0; i < n; i++) buf[len++] = dig[i];
    }
    else {
      for (i = 0; i <= e10; i++) buf[len++] = i < n ? dig[i] : '0';
      buf[len++] = point;
      if (n <= e10 + 1) buf[len++] = '0';           /* integral: 3.0 */
      for (i = e10 + 1; i < n; i++) buf[len++] = dig[i];
    }
  }
  else {
    buf[len++] = dig[0];
    if (n > 1) {
      buf[len++] = point;
      for (i = 1; i < n; i++) buf[len++] = dig[i];
    }
    len += (size_t) snprintf(buf + len, 8, "e%c%02d", e10 < 0 ? '-' : '+',
                             e10 < 0 ? -e10 : e10);
  }
  buf[len] = '\0';
  return len;
}

/* The significant digits of finite x (nonzero) rounded to p <= 17 (to
** dig, without trailing zeros), their count; *e10 its decimal exponent.
** From x's 17 digits (d17, e17: printf's, exact), rounded half up as
** text: exact but where the dropped digits are 5 then zeros, where the
** digits beyond the 17th decide, so printf rounds again. */
static int round_digits (double x, const char *d17, int e17, int p,
                         char *dig, int *e10) {
  char tmp[40];
  int i;
  *e10 = e17;
  memcpy(dig, d17, (size_t) p);
  if (p < 17) {
    for (i = p + 1; i < 17 && d17[i] == '0'; i++) ;
    if (d17[p] == '5' && i == 17) {                /* a tie as text */
      snprintf(tmp, sizeof tmp, "%.*e", p - 1, fabs(x));
      dig[0] = tmp[0];
      memcpy(dig + 1, tmp + 2, (size_t) (p - 1));
      *e10 = atoi(tmp + p + 2);
    }
    else if (d17[p] >= '5') {
      for (i = p - 1; i >= 0 && dig[i] == '9'; i--) dig[i] = '0';
      if (i >= 0) dig[i]++;
      else {                                       /* 99.9 -> 100 */
        dig[0] = '1';
        (*e10)++;
      }
    }
  }
  while (p > 1 && dig[p - 1] == '0') p--;
  return p;
}

/* Writes finite float x at buf (at least 32 bytes) in the fewest
** significant digits (15, 16 or 17, when float_short finds none) that
** strtod reads back as x, with a '.' whatever the locale, and ".0" after
** an integral one. Its length. (Fewer than 15 are not tried: a decimal of
** at most 15 digits that reads back as x is also x rounded to 15 digits
** (trailing zeros dropped), as the 15-digit neighbours of a normal x are
** over 4 ulps apart; a subnormal one may get more digits than it needs.
** 17 always read back.) One printf gives the 17 digits; 15 and 16 are
** rounded from them. */
static size_t float_text (char *buf, lua_Number x, char point) {
  char e[40], d17[17], dig[17];
  int e17, e10, n, p, ex;
  double half_ulp;
  size_t len, i;
  if ((len = float_short(buf, (double) x)) > 0) return len;
  snprintf(e, sizeof e, "%.16e", fabs((double) x));   /* d.dddde+XX */
  d17[0] = e[0];
  memcpy(d17 + 1, e + 2, 16);
  e17 = atoi(e + 19);
  /* A candidate that reads back is within half an ulp of x, so within
  ** half an ulp and half a unit of the 17th digit of d17: half an ulp in
  ** those units is 2^-53 * 10^16 * (x's decimal mantissa, [1, 10)) / (its
  ** binary one, [1, 2)). One farther off (by a margin for this estimate)
  ** is not read back with strtod. (A subnormal x's ulp is larger: it may
  ** get more digits than it needs.) */
  half_ulp = 0x1p-53 * 1e16 * ((d17[0] - '0') + (d17[1] - '0') / 10.0 +
                               (d17[2] - '0') / 100.0)
             / (2 * fabs(frexp((double) x, &ex)));
  for (p = 15; p <= 17; p++) {
    int r = p == 15 ? (d17[15] - '0') * 10 + (d17[16] - '0') : d17[16] - '0';
    int unit = p == 15 ? 100 : 10;
    if (p < 17 && (r < unit - r ? r : unit - r) > half_ulp + 1.5) continue;
    n = round_digits((double) x, d17, e17, p, dig, &e10);
    len = decimal_text(buf, signbit(x), dig, n, e10, point);
    if (p == 17 || strtod(buf, NULL) == (double) x) break;
  }
  for (i = 0; i < len; i++)
    if (buf[i] == point) buf[i] = '.';
  return len;
}

/* ---- encoding ---- */

typedef struct {
  lua_State *L;
  Buf b;
  char point;                     /* the locale's decimal point */
  int depth;                      /* tables entered */
  /* Where the walk is, for an error's message: at depth d, the array index
  ** path[d].i, or (key != 0) the key at stack index path[d].key. */
  struct { lua_Integer i; int key; } path[JSON_MAXDEPTH + 1];
} Enc;

/* Adds the key at idx to the path text in B, as Lua would index with it. */
static void path_key (Enc *e, luaL_Buffer *B, int idx) {
  lua_State *L = e->L;
  size_t len, i;
  const char *s;
  char num[40];
  if (lua_type(L, idx) == LUA_TNUMBER) {
    luaL_addchar(B, '[');
    if (lua_isinteger(L, idx))
      luaL_addlstring(B, num, int_text(num, lua_tointeger(L, idx)));
    else if (isinf(lua_tonumber(L, idx)))
      luaL_addstring(B, lua_tonumber(L, idx) > 0 ? "1/0" : "-1/0");
    else
      luaL_addlstring(B, num, float_text(num, lua_tonumber(L, idx), e->point));
    luaL_addchar(B, ']');
    return;
  }
  if (lua_type(L, idx) != LUA_TSTRING) {
    luaL_addstring(B, "[?]");
    return;
  }
  s = lua_tolstring(L, idx, &len);
  for (i = 0; i < len && i < 40; i++)
    if (!(s[i] == '_' || (s[i] >= 'a' && s[i] <= 'z') ||
          (s[i] >= 'A' && s[i] <= 'Z') || (i > 0 && s[i] >= '0' && s[i] <= '9')))
      break;
  if (len > 0 && i == len) {
    luaL_addchar(B, '.');
    luaL_addlstring(B, s, len);
    return;
  }
  luaL_addstring(B, "[\"");
  for (i = 0; i < len && i < 40; i++) {
    unsigned char c = (unsigned char) s[i];
    if (c == '"' || c == '\\') {
      luaL_addchar(B, '\\');
      luaL_addchar(B, (char) c);
    }
    else if (c < 0x20 || c >= 0x7f) {
      snprintf(num, sizeof num, "\\x%02X", c);
      luaL_addstring(B, num);
    }
    else luaL_addchar(B, (char) c);
  }
  luaL_addstring(B, i < len ? "...\"]" : "\"]");
}

/* Raises kind "json": "braid.json.encode: <what> at value<path>", the path
** to the value the walk is at (the first and last few steps of a long
** one). `what` is a format, as lua_pushfstring's. */
static int enc_fail (Enc *e, const char *what, ...) {
  lua_State *L = e->L;
  luaL_Buffer B;
  va_list ap;
  int d;
  luaL_checkstack(L, 4, NULL);
  va_start(ap, what);
  lua_pushvfstring(L, what, ap);
  va_end(ap);
  luaL_buffinit(L, &B);
  luaL_addstring(&B, "value");
  for (d = 1; d <= e->depth; d++) {
    char num[24];
    if (e->depth > 12 && d == 7) {
      lua_pushfstring(L, "<%d levels>", e->depth - 10);
      luaL_addvalue(&B);
      d = e->depth - 4;
      continue;
    }
    if (e->path[d].key != 0) path_key(e, &B, e->path[d].key);
    else {
      luaL_addchar(&B, '[');
      luaL_addlstring(&B, num, int_text(num, e->path[d].i));
      luaL_addchar(&B, ']');
    }
  }
  luaL_pushresult(&B);
  return braid_error(L, "json", NULL, "braid.json.encode: %s at %s",
                     lua_tostring(L, -2), lua_tostring(L, -1));
}

static void enc_number (Enc *e, int idx) {
  char *p = buf_room(&e->b, 32);
  if (lua_isinteger(e->L, idx))
    e->b.n += int_text(p, lua_tointeger(e->L, idx));
  else {
    lua_Number x = lua_tonumber(e->L, idx);
    if (isnan(x) || isinf(x))
      enc_fail(e, "%s cannot be encoded (JSON has no such number)",
               isnan(x) ? "NaN" : x > 0 ? "infinity" : "-infinity");
    e->b.n += float_text(p, x, e->point);
  }
}

/* The string s, quoted and escaped; invalid UTF-8 is refused. */
static void enc_string (Enc *e, const char *s, size_t len, int key) {
  static const char hex[] = "0123456789abcdef";
  Buf *b = &e->b;
  size_t i = 0, run;
  if (len < JSON_MAXSIZE - 2) buf_room(b, len + 2);   /* the usual: no escapes */
  buf_addc(b, '"');
  while (i < len) {
    unsigned char c;
    run = i;
    while (i < len && plain[(unsigned char) s[i]]) i++;
    if (i > run) buf_add(b, s + run, i - run);
    if (i == len) break;
    c = (unsigned char) s[i];
    if (c >= 0x80) {
      size_t n = utf8_len((const unsigned char *) s + i, len - i);
      if (n == 0)
        enc_fail(e, "invalid UTF-8 (byte %I of the %s)", (lua_Integer) i + 1,
                 key ? "key" : "string");
      buf_add(b, s + i, n);
      i += n;
      continue;
    }
    else {
      char *p = buf_room(b, 6);
      p[0] = '\\';
      switch (c) {
        case '"': p[1] = '"'; b->n += 2; break;
        case '\\': p[1] = '\\'; b->n += 2; break;
        case '\n': p[1] = 'n'; b->n += 2; break;
        case '\r': p[1] = 'r'; b->n += 2; break;
        case '\t': p[1] = 't'; b->n += 2; break;
        case '\b': p[1] = 'b'; b->n += 2; break;
        case '\f': p[1] = 'f'; b->n += 2; break;
        default:
          memcpy(p + 1, "u00", 3);
          p[4] = hex[c >> 4];
          p[5] = hex[c & 15];
          b->n += 6;
      }
      i++;
    }
  }
  buf_addc(b, '"');
}

static void enc_value (Enc *e, int idx);

/* An object's key at idx: a string as it is, a number as its text. */
static void enc_key (Enc *e, int idx) {
  lua_State *L = e->L;
  size_t len;
  const char *s;
  char num[40];
  switch (lua_type(L, idx)) {
    case LUA_TSTRING:
      s = lua_tolstring(L, idx, &len);
      enc_string(e, s, len, 1);
      return;
    case LUA_TNUMBER:
      if (lua_isinteger(L, idx))
        len = int_text(num, lua_tointeger(L, idx));
      else {
        lua_Number x = lua_tonumber(L, idx);
        if (isinf(x)) enc_fail(e, "a key that is not finite cannot be encoded");
        len = float_text(num, x, e->point);
      }
      enc_string(e, num, len, 1);
      return;
    default:
      enc_fail(e, "a key of type %s cannot be encoded (keys are strings "
               "or numbers)", luaL_typename(L, idx));
  }
}

/* The table at idx: an array when its keys are 1..n (n > 0) and no other,
** else an object. */
static void enc_table (Enc *e, int t) {
  lua_State *L = e->L;
  lua_Integer n, count = 0;
  int array = 1, first = 1;
  if (e->depth >= JSON_MAXDEPTH)
    enc_fail(e, "nesting deeper than %d levels (a table that contains "
             "itself?)", JSON_MAXDEPTH);
  luaL_checkstack(L, 6, NULL);
  n = (lua_Integer) lua_rawlen(L, t);
  lua_pushnil(L);
  while (lua_next(L, t)) {
    lua_pop(L, 1);
    if (!lua_isinteger(L, -1) || lua_tointeger(L, -1) < 1 ||
        lua_tointeger(L, -1) > n) {
      lua_pop(L, 1);
      array = 0;
      break;
    }
    count++;
  }
  e->depth++;
  if (array && count == n && n > 0) {
    lua_Integer i;
    buf_addc(&e->b, '[');
    e->path[e->depth].key = 0;
    for (i = 1; i <= n; i++) {
      if (i > 1) buf_addc(&e->b, ',');
      e->path[e->depth].i = i;
      lua_rawgeti(L, t, i);
      enc_value(e, lua_gettop(L));
      lua_pop(L, 1);
    }
    buf_addc(&e->b, ']');
  }
  else {
    buf_addc(&e->b, '{');
    lua_pushnil(L);
    while (lua_next(L, t)) {
      int v = lua_gettop(L);
      e->path[e->depth].key = v - 1;
      if (!first) buf_addc(&e->b, ',');
      first = 0;
      enc_key(e, v - 1);
      buf_addc(&e->b, ':');
      enc_value(e, v);
      lua_pop(L, 1);
    }
    buf_addc(&e->b, '}');
  }
  e->depth--;
}

static void enc_value (Enc *e, int idx) {
  lua_State *L = e->L;
  size_t len;
  const char *s;
  switch (lua_type(L, idx)) {
    case LUA_TNIL:
      buf_add(&e->b, "null", 4);
      return;
    case LUA_TBOOLEAN:
      if (lua_toboolean(L, idx)) buf_add(&e->b, "true", 4);
      else buf_add(&e->b, "false", 5);
      return;
    case LUA_TNUMBER:
      enc_number(e, idx);
      return;
    case LUA_TSTRING:
      s = lua_tolstring(L, idx, &len);
      enc_string(e, s, len, 0);
      return;
    case LUA_TTABLE:
      enc_table(e, idx);
      return;
    case LUA_TLIGHTUSERDATA:
      if (lua_touserdata(L, idx) == NULL) {     /* braid.json.null */
        buf_add(&e->b, "null", 4);
        return;
      }
      enc_fail(e, "a light userdata other than braid.json.null cannot be "
               "encoded");
      return;
    default:
      enc_fail(e, "a %s cannot be encoded", luaL_typename(L, idx));
  }
}

/* The encoding of the value at 1, in protected mode (l_encode). */
static int encode (lua_State *L) {
  Enc *e;
  /* The walk's state, path and all, in a userdata: no large C frame. */
  e = (Enc *) lua_newuserdatauv(L, sizeof *e, 0);
  e->L = L;
  e->point = lua_getlocaledecpoint();
  e->depth = 0;
  buf_init(L, &e->b, 256);
  enc_value(e, 1);
  lua_pushlstring(L, e->b.p, e->b.n);
  return 1;
}

/* Runs f (encode or decode) on the value at 1, in protected mode: the
** state's ordinary "not enough memory" becomes kind "memory" naming the
** call; any other error goes on as it is. */
static int protect (lua_State *L, lua_CFunction f, const char *fname) {
  int rc;
  lua_settop(L, 1);
  lua_pushcfunction(L, f);
  lua_insert(L, 1);
  rc = lua_pcall(L, 1, 1, 0);
  if (rc == LUA_ERRMEM) {
    lua_pop(L, 1);
    return braid_error(L, "memory", NULL, "%s: not enough memory", fname);
  }
  if (rc != LUA_OK) return lua_error(L);
  return 1;
}

/* braid.json.encode(value) -> string (docs/API.md, "braid.json"). */
static int l_encode (lua_State *L) {
  if (lua_type(L, 1) == LUA_TNONE)
    return braid_argerror(L, 1, "braid.json.encode", "value expected");
  return protect(L, encode, "braid.json.encode");
}

/* ---- decoding ---- */

typedef struct {
  lua_State *L;
  const char *s, *p, *end;        /* the text, where the parse is, its end */
  char point;
  int depth;
  Buf b;                          /* a string with escapes, decoded */
} Dec;

/* Raises kind "json": "braid.json.decode: <what> at character N", with
** `position` N (the byte at at, from 1). `what` is a format. */
static int dec_fail (Dec *d, const char *at, const char *what, ...) {
  lua_State *L = d->L;
  lua_Integer pos = (lua_Integer) (at - d->s) + 1;
  va_list ap;
  luaL_checkstack(L, 4, NULL);
  va_start(ap, what);
  lua_pushvfstring(L, what, ap);
  va_end(ap);
  braid_pusherror(L, "json", NULL, "braid.json.decode: %s at character %I",
                  lua_tostring(L, -1), pos);
  lua_pushinteger(L, pos);
  lua_setfield(L, -2, "position");
  return lua_error(L);
}

/* "byte 0xNN", pushed. */
static const char *byte_name (lua_State *L, unsigned char c) {
  char hex[8];
  snprintf(hex, sizeof hex, "%02X", (unsigned) c);
  return lua_pushfstring(L, "byte 0x%s", hex);
}

/* What is at p, for an error: "'x'", "byte 0xNN" or "the end of the text". */
static const char *found (Dec *d, const char *p) {
  unsigned char c;
  if (p >= d->end) return "the end of the text";
  c = (unsigned char) *p;
  if (c > 0x20 && c < 0x7f) return lua_pushfstring(d->L, "'%c'", (int) c);
  return byte_name(d->L, c);
}

static void skip_ws (Dec *d) {
  const char *p = d->p;
  while (p < d->end && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t'))
    p++;
  d->p = p;
}

/* Four hex digits at p (checked to be there) as a number, or -1. */
static long hex4 (const char *p) {
  long v = 0;
  int i;
  for (i = 0; i < 4; i++) {
    char c = p[i];
    v <<= 4;
    if (c >= '0' && c <= '9') v |= c - '0';
    else if (c >= 'a' && c <= 'f') v |= c - 'a' + 10;
    else if (c >= 'A' && c <= 'F') v |= c - 'A' + 10;
    else return -1;
  }
  return v;
}

/* The \u escape at p (p[0] == '\\', p[1] == 'u'), and a second one when it
** is a high surrogate, added to the buffer as UTF-8. Returns what follows. */
static const char *dec_uescape (Dec *d, const char *p) {
  long cp = d->end - p < 6 ? -1 : hex4(p + 2), lo;
  char *o;
  if (cp < 0)
    dec_fail(d, p, "invalid \\u escape (four hex digits expected)");
  if (cp >= 0xdc00 && cp <= 0xdfff)
    dec_fail(d, p, "a lone low surrogate \\u%c%c%c%c", p[2], p[3], p[4], p[5]);
  if (cp >= 0xd800 && cp <= 0xdbff) {
    lo = d->end - p >= 12 && p[6] == '\\' && p[7] == 'u' ? hex4(p + 8) : -1;
    if (lo < 0xdc00 || lo > 0xdfff)
      dec_fail(d, p, "a lone high surrogate \\u%c%c%c%c (a low one, "
               "\\uDC00..\\uDFFF, must follow)", p[2], p[3], p[4], p[5]);
    cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
    p += 6;
  }
  p += 6;
  o = buf_room(&d->b, 4);
  if (cp < 0x80) {
    o[0] = (char) cp;
    d->b.n += 1;
  }
  else if (cp < 0x800) {
    o[0] = (char) (0xc0 | (cp >> 6));
    o[1] = (char) (0x80 | (cp & 0x3f));
    d->b.n += 2;
  }
  else if (cp < 0x10000) {
    o[0] = (char) (0xe0 | (cp >> 12));
    o[1] = (char) (0x80 | ((cp >> 6) & 0x3f));
    o[2] = (char) (0x80 | (cp & 0x3f));
    d->b.n += 3;
  }
  else {
    o[0] = (char) (0xf0 | (cp >> 18));
    o[1] = (char) (0x80 | ((cp >> 12) & 0x3f));
    o[2] = (char) (0x80 | ((cp >> 6) & 0x3f));
    o[3] = (char) (0x80 | (cp & 0x3f));
    d->b.n += 4;
  }
  return p;
}

/* The string at d->p (its '"'), pushed. One without escapes is pushed
** from the text itself; one with them is built in the buffer. */
static void dec_string (Dec *d) {
  const char *open = d->p, *p = open + 1, *end = d->end, *run;
  int escaped = 0;
  for (;;) {
    unsigned char c;
    run = p;
    while (p < end && plain[(unsigned char) *p]) p++;
    if (escaped && p > run) buf_add(&d->b, run, (size_t) (p - run));
    if (p >= end)
      dec_fail(d, p, "unterminated string (it begins at character %I)",
               (lua_Integer) (open - d->s) + 1);
    c = (unsigned char) *p;
    if (c == '"') break;
    if (c >= 0x80) {
      size_t n = utf8_len((const unsigned char *) p, (size_t) (end - p));
      if (n == 0) dec_fail(d, p, "invalid UTF-8 in a string");
      if (escaped) buf_add(&d->b, p, n);
      p += n;
    }
    else if (c == '\\') {
      char e;
      if (!escaped) {                 /* from here on, in the buffer */
        escaped = 1;
        d->b.n = 0;
        buf_add(&d->b, open + 1, (size_t) (p - open - 1));
      }
      if (p + 1 >= end)
        dec_fail(d, p + 1, "unterminated string (it begins at character %I)",
                 (lua_Integer) (open - d->s) + 1);
      switch (p[1]) {
        case '"': e = '"'; break;
        case '\\': e = '\\'; break;
        case '/': e = '/'; break;
        case 'b': e = '\b'; break;
        case 'f': e = '\f'; break;
        case 'n': e = '\n'; break;
        case 'r': e = '\r'; break;
        case 't': e = '\t'; break;
        case 'u':
          p = dec_uescape(d, p);
          continue;
        default:
          dec_fail(d, p, "invalid escape (a backslash, then %s) in a "
                   "string", found(d, p + 1));
          return;   /* (dec_fail raises) */
      }
      buf_addc(&d->b, e);
      p += 2;
    }
    else
      dec_fail(d, p, "a control character (%s) in a string: it must be "
               "escaped", byte_name(d->L, c));
  }
  if (escaped) lua_pushlstring(d->L, d->b.p, d->b.n);
  else lua_pushlstring(d->L, open + 1, (size_t) (p - open - 1));
  d->p = p + 1;
}

#define isdigit_(c) ((unsigned char) ((c) - '0') < 10)

/* The number at d->p, pushed: an integer when it has no fraction and no
** exponent and fits lua_Integer ("-0" is the float -0.0), else a float. */
static void dec_number (Dec *d) {
  const char *start = d->p, *p = start, *end = d->end;
  int neg = 0, isint = 1;
  double x;
  char *ep;
  if (*p == '-') {
    neg = 1;
    p++;
  }
  if (p >= end || !isdigit_(*p))
    dec_fail(d, p, "expected a digit but found %s", found(d, p));
  if (*p == '0') {
    p++;
    if (p < end && isdigit_(*p))
      dec_fail(d, start, "a number with a leading zero");
  }
  else
    while (p < end && isdigit_(*p)) p++;
  if (p < end && *p == '.') {
    isint = 0;
    p++;
    if (p >= end || !isdigit_(*p))
      dec_fail(d, p, "expected a digit after '.' but found %s", found(d, p));
    while (p < end && isdigit_(*p)) p++;
  }
  if (p < end && (*p == 'e' || *p == 'E')) {
    isint = 0;
    p++;
    if (p < end && (*p == '+' || *p == '-')) p++;
    if (p >= end || !isdigit_(*p))
      dec_fail(d, p, "expected a digit in the exponent but found %s",
               found(d, p));
    while (p < end && isdigit_(*p)) p++;
  }
  d->p = p;
  if (isint) {
    lua_Unsigned u = 0, max = (lua_Unsigned) LUA_MAXINTEGER + (lua_Unsigned) neg;
    const char *q;
    for (q = start + neg; q < p; q++) {
      unsigned dg = (unsigned) (*q - '0');
      if (u > (max - dg) / 10) break;
      u = u * 10 + dg;
    }
    if (q == p && !(neg && u == 0)) {
      lua_pushinteger(d->L, neg ? (lua_Integer) (0u - u) : (lua_Integer) u);
      return;
    }
  }
  /* The text is NUL-terminated (a Lua string), and strtod takes in C's
  ** locale what the checks above took, so it stops at p; where the
  ** locale's point is not '.', a copy with that point is read instead. */
  x = strtod(start, &ep);
  if (ep != p) {
    size_t i, len = (size_t) (p - start);
    d->b.n = 0;
    buf_add(&d->b, start, len);
    buf_addc(&d->b, '\0');
    for (i = 0; i < len; i++)
      if (d->b.p[i] == '.') d->b.p[i] = d->point;
    x = strtod(d->b.p, &ep);
  }
  if (isinf(x))
    dec_fail(d, start, "a number out of range (%s)",
             lua_pushlstring(d->L, start, (size_t) (p - start) > 40 ? 40 :
                             (size_t) (p - start)));
  lua_pushnumber(d->L, (lua_Number) x);
}

static void dec_value (Dec *d);

/* After an array's or an object's opening character. */
static void enter (Dec *d) {
  if (++d->depth > JSON_MAXDEPTH)
    dec_fail(d, d->p, "nesting deeper than %d levels", JSON_MAXDEPTH);
  luaL_checkstack(d->L, 4, NULL);
  d->p++;
  skip_ws(d);
}

static void dec_array (Dec *d) {
  lua_Integer i = 0;
  enter(d);
  lua_newtable(d->L);
  if (d->p < d->end && *d->p == ']') {
    d->p++;
    d->depth--;
    return;
  }
  for (;;) {
    dec_value(d);
    lua_rawseti(d->L, -2, ++i);
    skip_ws(d);
    if (d->p < d->end && *d->p == ',') {
      d->p++;
      continue;
    }
    if (d->p < d->end && *d->p == ']') break;
    dec_fail(d, d->p, "expected ',' or ']' but found %s", found(d, d->p));
  }
  d->p++;
  d->depth--;
}

static void dec_object (Dec *d) {
  enter(d);
  lua_newtable(d->L);
  if (d->p < d->end && *d->p == '}') {
    d->p++;
    d->depth--;
    return;
  }
  for (;;) {
    if (d->p >= d->end || *d->p != '"')
      dec_fail(d, d->p, "expected a string (a key) but found %s",
               found(d, d->p));
    dec_string(d);
    skip_ws(d);
    if (d->p >= d->end || *d->p != ':')
      dec_fail(d, d->p, "expected ':' but found %s", found(d, d->p));
    d->p++;
    dec_value(d);
    lua_rawset(d->L, -3);             /* a key seen again: the last wins */
    skip_ws(d);
    if (d->p < d->end && *d->p == ',') {
      d->p++;
      skip_ws(d);
      continue;
    }
    if (d->p < d->end && *d->p == '}') break;
    dec_fail(d, d->p, "expected ',' or '}' but found %s", found(d, d->p));
  }
  d->p++;
  d->depth--;
}

/* A literal: true, false or null. */
static void dec_literal (Dec *d, const char *word, size_t len) {
  if ((size_t) (d->end - d->p) < len || memcmp(d->p, word, len) != 0)
    dec_fail(d, d->p, "expected a value but found %s", found(d, d->p));
  d->p += len;
}

static void dec_value (Dec *d) {
  skip_ws(d);
  switch (d->p < d->end ? *d->p : '\0') {
    case '{': dec_object(d); return;
    case '[': dec_array(d); return;
    case '"': dec_string(d); return;
    case 't':
      dec_literal(d, "true", 4);
      lua_pushboolean(d->L, 1);
      return;
    case 'f':
      dec_literal(d, "false", 5);
      lua_pushboolean(d->L, 0);
      return;
    case 'n':
      dec_literal(d, "null", 4);
      lua_pushlightuserdata(d->L, NULL);          /* braid.json.null */
      return;
    case '-': case '0': case '1': case '2': case '3': case '4':
    case '5': case '6': case '7': case '8': case '9':
      dec_number(d);
      return;
    default:
      dec_fail(d, d->p, "expected a value but found %s", found(d, d->p));
  }
}

/* The decoding of the text at 1, in protected mode (l_decode). */
static int decode (lua_State *L) {
  Dec *d;
  size_t len;
  d = (Dec *) lua_newuserdatauv(L, sizeof *d, 0);
  d->L = L;
  d->s = d->p = lua_tolstring(L, 1, &len);
  d->end = d->s + len;
  d->point = lua_getlocaledecpoint();
  d->depth = 0;
  buf_init(L, &d->b, 64);
  dec_value(d);
  skip_ws(d);
  if (d->p < d->end)
    dec_fail(d, d->p, "expected the end of the text but found %s",
             found(d, d->p));
  return 1;
}

/* braid.json.decode(text) -> value (docs/API.md, "braid.json"). */
static int l_decode (lua_State *L) {
  if (lua_type(L, 1) != LUA_TSTRING)
    return braid_argerror(L, 1, "braid.json.decode",
                          lua_pushfstring(L, "string expected, got %s",
                                          luaL_typename(L, 1)));
  return protect(L, decode, "braid.json.decode");
}

/* Sets braid.json (encode, decode, null) on the braid table at the stack
** top. braid.json.null is the light userdata NULL, the value lua-cjson's
** cjson.null is, so that a script that mixes both still sees one null.
** [-0, +0, m] */
void braid__open_json (lua_State *L) {
  static const luaL_Reg funcs[] = {
    {"encode", l_encode},
    {"decode", l_decode},
    {NULL, NULL}
  };
  lua_createtable(L, 0, 3);
  luaL_setfuncs(L, funcs, 0);
  lua_pushlightuserdata(L, NULL);
  lua_setfield(L, -2, "null");
  lua_setfield(L, -2, "json");
}
