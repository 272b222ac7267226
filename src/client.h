/*
 * client.h: forkq's side of the socket protocol (spec 7): one connection to
 * forkqd, requests written as single JSON lines and answers read back line by
 * line. The framing lives here so that forkq.c only deals in JSON objects.
 */
#ifndef FORKQ_CLIENT_H
#define FORKQ_CLIENT_H

#include <sys/types.h>

#include <stddef.h>

#include <jansson.h>

struct client;

/* Connects to the socket at path; NULL with errno set on failure. */
struct client	*client_connect(const char *);
void		 client_free(struct client *);

/*
 * Writes req as one compact JSON line. Does not take ownership of req.
 * Returns 0, or -1 with errno set.
 */
int		 client_send(struct client *, const json_t *);

/*
 * Reads the next line. Returns 1 and points *line at it (newline stripped,
 * NUL-terminated, valid until the next call) with its length in *len; 0 at
 * a clean end of stream; -1 with errno set on a read error, a line longer
 * than FORKQ_MAX_LINE (EMSGSIZE) or a stream cut inside a line (EPROTO).
 */
int		 client_read_line(struct client *, char **, size_t *);

/*
 * Decodes the standard base64 alphabet with padding, as the output op sends
 * it. out must hold at least len / 4 * 3 bytes. Returns the number of bytes
 * written, or -1 if the input is not base64.
 */
ssize_t		 client_b64_decode(const char *, size_t, unsigned char *);

#endif
