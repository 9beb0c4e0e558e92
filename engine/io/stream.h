/*
** stream.h: what braid's streams share (stream.c): TCP streams (tcp.c) and
** a child's pipes (process.c).
*/
#ifndef BRAID_STREAM_H
#define BRAID_STREAM_H

/* Writing to a socket or pipe whose reader has gone must fail with EPIPE,
** not kill the process: SIGPIPE gets a no-op handler, unless the host
** already chose a disposition. Every opener of a library that writes to
** streams calls it; calling it again is harmless. */
void braid__stream_sigpipe(void);

#endif
