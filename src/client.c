/*
 * client.c: one connection from forkq to forkqd (spec 7). Owns the socket
 * and its read buffer. Bytes read past the end of a line stay buffered for
 * the next call, so pipelined answers and watch streams split correctly; a
 * line is complete only once its newline has arrived.
 */
#include "config.h"

#include <sys/types.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "client.h"
#include "util.h"
#include "xmalloc.h"

/* First buffer size; it doubles as needed up to one maximal line. */
#define CLIENT_BUF_INITIAL	16384

struct client {
	int	 fd;
	char	*buf;
	size_t	 size;		/* bytes allocated */
	size_t	 start;		/* first byte not yet returned as a line */
	size_t	 end;		/* one past the last byte read */
	size_t	 scanned;	/* bytes after start known to hold no newline */
};

struct client *
client_connect(const char *path)
{
	struct sockaddr_un	 sun;
	struct client		*c;
	int			 fd, saved;

	memset(&sun, 0, sizeof sun);
	sun.sun_family = AF_UNIX;
	if (strlcpy(sun.sun_path, path, sizeof sun.sun_path) >=
	    sizeof sun.sun_path) {
		errno = ENAMETOOLONG;
		return (NULL);
	}
	if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) == -1)
		return (NULL);
	if (connect(fd, (struct sockaddr *)&sun, sizeof sun) == -1) {
		saved = errno;
		close(fd);
		errno = saved;
		return (NULL);
	}
	c = xcalloc(1, sizeof *c);
	c->fd = fd;
	c->size = CLIENT_BUF_INITIAL;
	c->buf = xmalloc(c->size);
	return (c);
}

void
client_free(struct client *c)
{
	if (c == NULL)
		return;
	close(c->fd);
	free(c->buf);
	free(c);
}

/*
 * Writes all of buf, across short writes and interruptions. MSG_NOSIGNAL:
 * forkq leaves SIGPIPE to kill it for a closed stdout, but a forkqd that
 * went away is an error to report (EPIPE), not a signal.
 */
static int
client_write_all(int fd, const char *buf, size_t len)
{
	ssize_t	n;

	while (len > 0) {
		if ((n = send(fd, buf, len, MSG_NOSIGNAL)) == -1) {
			if (errno == EINTR)
				continue;
			return (-1);
		}
		buf += n;
		len -= n;
	}
	return (0);
}

int
client_send(struct client *c, const json_t *req)
{
	char	*s;
	size_t	 len;
	int	 rv;

	/* Compact output escapes control characters: one line, always. */
	if ((s = json_dumps(req, JSON_COMPACT)) == NULL) {
		errno = EINVAL;
		return (-1);
	}
	len = strlen(s);
	if (len + 1 > FORKQ_MAX_LINE) {
		free(s);
		errno = EMSGSIZE;
		return (-1);
	}
	s = xrealloc(s, len + 1);
	s[len] = '\n';
	rv = client_write_all(c->fd, s, len + 1);
	free(s);
	return (rv);
}

/*
 * Makes room after end and reads once. Returns bytes read, 0 at end of
 * stream, -1 on error. Moves the pending bytes to the front of the buffer,
 * which is why a returned line is only valid until the next call.
 */
static ssize_t
client_fill(struct client *c)
{
	ssize_t	n;

	if (c->start > 0) {
		memmove(c->buf, c->buf + c->start, c->end - c->start);
		c->end -= c->start;
		c->start = 0;
	}
	if (c->end == c->size) {
		if (c->size >= FORKQ_MAX_LINE) {
			errno = EMSGSIZE;
			return (-1);
		}
		c->size *= 2;
		if (c->size > FORKQ_MAX_LINE)
			c->size = FORKQ_MAX_LINE;
		c->buf = xrealloc(c->buf, c->size);
	}
	for (;;) {
		n = read(c->fd, c->buf + c->end, c->size - c->end);
		if (n == -1 && errno == EINTR)
			continue;
		if (n > 0)
			c->end += n;
		return (n);
	}
}

int
client_read_line(struct client *c, char **line, size_t *len)
{
	char	*p, *nl;
	ssize_t	 n;

	for (;;) {
		p = c->buf + c->start;
		nl = memchr(p + c->scanned, '\n', c->end - c->start -
		    c->scanned);
		if (nl != NULL) {
			*nl = '\0';
			c->start = nl + 1 - c->buf;
			c->scanned = 0;
			if (nl == p)
				continue;	/* empty lines carry nothing */
			*line = p;
			*len = nl - p;
			return (1);
		}
		c->scanned = c->end - c->start;
		if ((n = client_fill(c)) == -1)
			return (-1);
		if (n == 0) {
			if (c->end > c->start) {
				errno = EPROTO;
				return (-1);
			}
			return (0);
		}
	}
}

/* The value of one base64 digit, -1 if ch is not one. */
static int
client_b64_value(unsigned char ch)
{
	if (ch >= 'A' && ch <= 'Z')
		return (ch - 'A');
	if (ch >= 'a' && ch <= 'z')
		return (ch - 'a' + 26);
	if (ch >= '0' && ch <= '9')
		return (ch - '0' + 52);
	if (ch == '+')
		return (62);
	if (ch == '/')
		return (63);
	return (-1);
}

ssize_t
client_b64_decode(const char *in, size_t len, unsigned char *out)
{
	size_t	i, j, o = 0, pad;
	int	v[4];

	if (len % 4 != 0)
		return (-1);
	for (i = 0; i < len; i += 4) {
		pad = 0;
		for (j = 0; j < 4; j++) {
			/* '=' only in the last two places of the last group. */
			if (in[i + j] == '=' && j >= 2 && i + 4 == len) {
				v[j] = 0;
				pad++;
				continue;
			}
			if (pad > 0 ||
			    (v[j] = client_b64_value(in[i + j])) == -1)
				return (-1);
		}
		out[o++] = v[0] << 2 | v[1] >> 4;
		if (pad < 2)
			out[o++] = (v[1] & 0xf) << 4 | v[2] >> 2;
		if (pad < 1)
			out[o++] = (v[2] & 0x3) << 6 | v[3];
	}
	return (o);
}
