/*
 * tftpget: the benchmark's TFTP read client, in C so that the client's own cost per packet
 * is small next to the servers' and the benchmark compares servers, not the client.
 *
 * It asks for blksize and windowsize (RFC 2348, RFC 7440; curl cannot ask for a window) and
 * follows RFC 7440's receiver rules: ACK the last block of each window and the final block;
 * on a gap, ACK the last block received in order, once, so the sender restarts after it; on
 * a timeout, send the last ACK again. Nothing is written: the data is counted and its CRC-32
 * taken with zlib (as Python's zlib.crc32), so the caller can check every byte.
 *
 *   tftpget HOST PORT NAME [BLKSIZE [WINDOWSIZE [TURNAROUND_US]]]
 *
 * TURNAROUND_US is slept before each ACK: a board's round trip, emulated on loopback.
 * Prints one JSON line: size, crc32, seconds (request to last ACK), acks_resent, options.
 * Built by bench/bench_tftp.py with "gcc -O2 ... -lz" (zlib1g-dev, which python3-dev brings).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

enum { RRQ = 1, DATA = 3, ACK = 4, ERROR = 5, OACK = 6 };
enum { TIMEOUT_MS = 1000, RETRIES = 10 };

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int fail(const char *what)
{
	fprintf(stderr, "tftpget: %s\n", what);
	return 1;
}

/* Append "text\0" to buf at *len. */
static void put(char *buf, size_t *len, const char *text)
{
	size_t n = strlen(text) + 1;
	memcpy(buf + *len, text, n);
	*len += n;
}

int main(int argc, char **argv)
{
	if (argc < 4 || argc > 7)
		return fail("usage: tftpget HOST PORT NAME [BLKSIZE [WINDOWSIZE [TURNAROUND_US]]]");
	long want_blksize = argc > 4 ? atol(argv[4]) : 512;
	long want_window = argc > 5 ? atol(argv[5]) : 1;
	long turnaround_us = argc > 6 ? atol(argv[6]) : 0;
	if (want_blksize < 8 || want_blksize > 65464 || want_window < 1 || want_window > 65535)
		return fail("blksize must be 8..65464 and windowsize 1..65535");
	if (strlen(argv[3]) > 400)
		return fail("name too long");

	struct addrinfo hints = {.ai_socktype = SOCK_DGRAM}, *server;
	if (getaddrinfo(argv[1], argv[2], &hints, &server) != 0)
		return fail("cannot resolve the server");
	int sock = socket(server->ai_family, SOCK_DGRAM, 0);
	if (sock < 0)
		return fail("socket");
	int rcvbuf = 8 << 20; /* several windows: a burst is not dropped by our own buffer */
	if (setsockopt(sock, SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof rcvbuf) < 0)
		setsockopt(sock, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);

	char request[512], number[24];
	size_t request_len = 2;
	request[0] = 0;
	request[1] = RRQ;
	put(request, &request_len, argv[3]);
	put(request, &request_len, "octet");
	if (want_blksize != 512) {
		snprintf(number, sizeof number, "%ld", want_blksize);
		put(request, &request_len, "blksize");
		put(request, &request_len, number);
	}
	if (want_window > 1) {
		snprintf(number, sizeof number, "%ld", want_window);
		put(request, &request_len, "windowsize");
		put(request, &request_len, number);
	}

	unsigned char *pkt = malloc(65536 + 4);
	if (!pkt)
		return fail("out of memory");
	struct timespec pause = {turnaround_us / 1000000, (turnaround_us % 1000000) * 1000};
	long blksize = 512, window = 1, granted_blksize = 0, granted_window = 0;
	unsigned long long size = 0, expected = 1;
	uLong crc = crc32(0, NULL, 0);
	long in_window = 0, tries = 0, acks_resent = 0;
	int connected = 0, options_seen = 0;
	unsigned char last_ack[4] = {0, ACK, 0, 0};
	double started = now();

	if (sendto(sock, request, request_len, 0, server->ai_addr, server->ai_addrlen) < 0)
		return fail("cannot send the request");
	for (;;) {
		struct pollfd pfd = {.fd = sock, .events = POLLIN};
		int ready = poll(&pfd, 1, TIMEOUT_MS);
		if (ready < 0 && errno == EINTR)
			continue;
		if (ready == 0) {
			if (++tries > RETRIES) {
				fprintf(stderr, "tftpget: timed out after block %llu\n", expected - 1);
				return 1;
			}
			if (!connected)
				sendto(sock, request, request_len, 0, server->ai_addr, server->ai_addrlen);
			else if (send(sock, last_ack, 4, 0) == 4)
				acks_resent++;
			in_window = 0;
			continue;
		}
		ssize_t n;
		if (!connected) {
			struct sockaddr_storage from;
			socklen_t fromlen = sizeof from;
			n = recvfrom(sock, pkt, 65536 + 4, 0, (struct sockaddr *)&from, &fromlen);
			if (n < 0)
				return fail("receive");
			/* The first answer comes from the transfer's port (its TID): talk only to it. */
			if (connect(sock, (struct sockaddr *)&from, fromlen) < 0)
				return fail("connect to the transfer's port");
			connected = 1;
		} else {
			n = recv(sock, pkt, 65536 + 4, 0);
			if (n < 0) {
				if (errno == EINTR)
					continue;
				return fail("receive");
			}
		}
		if (n < 4)
			continue;
		int op = pkt[0] << 8 | pkt[1];
		if (op == ERROR) {
			fprintf(stderr, "tftpget: ERROR %d: %.*s\n", pkt[2] << 8 | pkt[3], (int)(n - 4),
				(char *)pkt + 4);
			return 1;
		}
		if (op == OACK && expected == 1 && !options_seen) {
			options_seen = 1;
			/* name\0value\0 pairs */
			char *p = (char *)pkt + 2, *end = (char *)pkt + n;
			while (p < end) {
				char *name = p, *value = memchr(p, 0, end - p);
				if (!value || ++value >= end)
					break;
				char *next = memchr(value, 0, end - value);
				if (!next)
					break;
				if (!strcasecmp(name, "blksize"))
					granted_blksize = blksize = atol(value);
				else if (!strcasecmp(name, "windowsize"))
					granted_window = window = atol(value);
				p = next + 1;
			}
			if (turnaround_us)
				nanosleep(&pause, NULL);
			send(sock, last_ack, 4, 0);
			continue;
		}
		if (op != DATA)
			continue;
		if (!options_seen && expected == 1) {
			options_seen = 1; /* options ignored: plain RFC 1350 */
		}
		unsigned block = pkt[2] << 8 | pkt[3];
		if (block != (expected & 0xffff)) {
			/* A gap (RFC 7440 section 4): ACK what arrived in order, once per window. */
			if (in_window) {
				send(sock, last_ack, 4, 0);
				acks_resent++;
				in_window = 0;
			}
			continue;
		}
		tries = 0;
		crc = crc32(crc, pkt + 4, n - 4);
		size += n - 4;
		in_window++;
		int last = n - 4 < blksize;
		if (last || in_window >= window) {
			last_ack[2] = expected >> 8 & 0xff;
			last_ack[3] = expected & 0xff;
			if (turnaround_us)
				nanosleep(&pause, NULL);
			send(sock, last_ack, 4, 0);
			in_window = 0;
		}
		expected++;
		if (last)
			break;
	}
	double seconds = now() - started;
	printf("{\"size\": %llu, \"crc32\": %lu, \"seconds\": %.6f, \"acks_resent\": %ld, "
	       "\"options\": {",
	       size, crc, seconds, acks_resent);
	const char *sep = "";
	if (granted_blksize) {
		printf("\"blksize\": \"%ld\"", granted_blksize);
		sep = ", ";
	}
	if (granted_window)
		printf("%s\"windowsize\": \"%ld\"", sep, granted_window);
	printf("}}\n");
	return 0;
}
