/*
 * The lockstep (window 1) inner loop of a TFTP read transfer, run without the interpreter.
 *
 * At window 1 every block costs a round trip: the client's ACK wakes the server, which sends
 * the next block and sleeps again. What the server does between waking and sending is all
 * that its own code adds to the round trip, so this loop does only that: recv the ACK, check
 * that it acknowledges the block just sent, send the next block (read ahead from the view
 * with one preadv per run of blocks and per piece the run covers, headers written in the gaps
 * between payloads), repeat.
 * Anything else (a timeout, an error, an ERROR packet, any other ACK, the last block's ACK)
 * returns to the Python transfer (overrided/tftp/transfer.py), which owns every decision
 * beyond "the expected ACK came: send the next block". The GIL is released for the whole
 * loop; no Python object is touched inside it.
 *
 * The served view is a table of pieces, each a range of an open file (overrided/served.py):
 * rows of four native int64s, (start in the view, length, descriptor, offset in the file),
 * contiguous from 0 to the view's size. The rows carry the descriptors themselves, not
 * indexes into a list (OctetSource.fd_table resolves them once per transfer), so the loop
 * reads them without touching a Python object. A view of one piece (a whole file, or one
 * range of one) is read with one preadv per run, as a plain file is; across pieces, one
 * preadv per piece the run covers, its iovecs split where the piece ends.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

/* Why run() returned: the state it returns is valid in every case. */
enum stop {
	STOP_PACKET = 0, /* a packet that is not the expected ACK; value = its length */
	STOP_RECV = 1,   /* recv failed (timeout, interrupt, ICMP error...); value = errno */
	STOP_SEND = 2,   /* send failed; value = errno */
	STOP_READ = 3,   /* preadv failed (value = errno) or a file was short of its piece (0) */
};

#define MAX_RUN 64 /* blocks read ahead at most (iovecs on the stack) */
#define TFTP_DATA 3
#define TFTP_ACK 4

/* One piece of the view: bytes start .. start + length - 1 are the file's from offset. */
struct piece {
	int64_t start;
	int64_t length;
	int64_t fd;
	int64_t offset;
};

static struct piece piece_at(const unsigned char *table, Py_ssize_t row)
{
	struct piece p;

	memcpy(&p, table + row * (Py_ssize_t)sizeof p, sizeof p); /* rows need not be aligned */
	return p;
}

/* Whether the rows are contiguous from 0 to size, each non-empty and in a file. */
static int table_is_valid(const unsigned char *table, Py_ssize_t rows, long long size)
{
	int64_t end = 0;

	for (Py_ssize_t r = 0; r < rows; r++) {
		struct piece p = piece_at(table, r);

		if (p.start != end || p.length <= 0 || p.length > INT64_MAX - p.start ||
		    p.fd < 0 || p.fd > INT32_MAX || p.offset < 0 || p.offset > INT64_MAX - p.length)
			return 0;
		end = p.start + p.length;
	}
	return rows > 0 && end == size;
}

/* The row of the piece that holds byte pos (the table is valid and pos < its size). */
static Py_ssize_t row_of(const unsigned char *table, Py_ssize_t rows, long long pos)
{
	Py_ssize_t lo = 0, hi = rows - 1;

	while (lo < hi) {
		Py_ssize_t mid = lo + (hi - lo + 1) / 2;

		if (piece_at(table, mid).start <= pos)
			lo = mid;
		else
			hi = mid - 1;
	}
	return lo;
}

/*
 * Read want bytes of the view from offset into the payload slots of consecutive packets
 * (blksize bytes each, step apart, after a 4-byte header). One piece: one preadv of whole
 * slots, as for a plain file. More: one preadv per piece, over the slot parts it fills. Returns
 * the bytes read; fewer than want when a preadv failed (*err = errno) or a file was shorter
 * than its piece (*err = 0), and nothing after that was read.
 */
static long long read_run(const unsigned char *table, Py_ssize_t rows, unsigned char *packets,
			  Py_ssize_t step, Py_ssize_t blksize, long long count, long long offset,
			  long long want, struct iovec *iov, int *err)
{
	*err = 0;
	if (rows == 1) {
		struct piece p = piece_at(table, 0);

		for (long long k = 0; k < count; k++) {
			iov[k].iov_base = packets + k * step + 4;
			iov[k].iov_len = (size_t)blksize;
		}
		ssize_t got = preadv((int)p.fd, iov, (int)count, (off_t)(p.offset + offset));
		if (got < 0) {
			*err = errno;
			return 0;
		}
		return got;
	}
	long long pos = offset, end = offset + want, done = 0;
	long long k = 0, at = 0; /* the slot and the place in it where the next byte goes */

	for (Py_ssize_t r = row_of(table, rows, pos); pos < end && r < rows; r++) {
		struct piece p = piece_at(table, r);
		long long stop = p.start + p.length < end ? p.start + p.length : end;
		int n = 0;

		/* A piece's part of the run lies within the run's count slots: at most count iovecs. */
		for (long long q = pos; q < stop; n++) {
			long long take = blksize - at < stop - q ? blksize - at : stop - q;

			iov[n].iov_base = packets + k * step + 4 + at;
			iov[n].iov_len = (size_t)take;
			q += take;
			at += take;
			if (at == blksize) {
				k++;
				at = 0;
			}
		}
		ssize_t got = preadv((int)p.fd, iov, n, (off_t)(p.offset + (pos - p.start)));
		if (got < 0) {
			*err = errno;
			return done;
		}
		done += got;
		if (got < stop - pos)
			return done;
		pos = stop;
	}
	return done;
}

static double monotonic_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts); /* the clock of Python's time.monotonic() */
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

PyDoc_STRVAR(run_doc,
"run(sock_fd, table, buf, pkt, blksize, nblocks, size, sent, ahead, held)\n"
"    -> (stop, value, sent, ahead, held, sent_at)\n"
"\n"
"Answer ACKs of the block just sent with the next block until something else happens.\n"
"\n"
"Call it only when block ``sent`` (absolute number, 1 .. nblocks - 1) went out and every\n"
"block before it was acknowledged. ``table`` is the view: rows of four native int64s\n"
"(start in the view, length, file descriptor, offset in the file), contiguous from 0 to\n"
"``size``, each non-empty (ValueError otherwise). ``buf`` holds packets of blksize + 4\n"
"bytes back to back; slots 0 .. held - 1 hold blocks ahead .. ahead + held - 1 ready to\n"
"send. ``pkt`` receives the client's packets. Returns why it stopped (STOP_*), the errno\n"
"(0: a file shorter than its piece) or packet length, the\n"
"updated sent/ahead/held, and the CLOCK_MONOTONIC time of the last send (0.0 if none).");

static PyObject *run(PyObject *self, PyObject *args)
{
	int sock;
	Py_buffer table, buf, pkt;
	Py_ssize_t blksize;
	long long nblocks, size, sent, ahead, held;

	(void)self;
	if (!PyArg_ParseTuple(args, "iy*w*w*nLLLLL", &sock, &table, &buf, &pkt, &blksize, &nblocks,
			      &size, &sent, &ahead, &held))
		return NULL;
	const unsigned char *const rows_at = table.buf;
	const Py_ssize_t rows = table.len / (Py_ssize_t)sizeof(struct piece);
	if (table.len % (Py_ssize_t)sizeof(struct piece) != 0 ||
	    !table_is_valid(rows_at, rows, size)) {
		PyBuffer_Release(&table);
		PyBuffer_Release(&buf);
		PyBuffer_Release(&pkt);
		PyErr_SetString(PyExc_ValueError, "lockstep view table is not pieces from 0 to size");
		return NULL;
	}

	const Py_ssize_t step = blksize + 4;
	long long slots = blksize > 0 ? buf.len / step : 0;
	if (slots > MAX_RUN)
		slots = MAX_RUN;
	const long long last_full = nblocks - 1; /* blocks before this one are full */
	if (blksize < 8 || slots < 1 || pkt.len < 4 || held > slots || sent < 1 ||
	    sent > last_full || size < last_full * (long long)blksize) {
		PyBuffer_Release(&table);
		PyBuffer_Release(&buf);
		PyBuffer_Release(&pkt);
		PyErr_SetString(PyExc_ValueError, "lockstep state out of range");
		return NULL;
	}
	const Py_ssize_t last_length = (Py_ssize_t)(size - last_full * (long long)blksize);
	unsigned char *const packets = buf.buf;
	unsigned char *const in = pkt.buf;
	int stop = STOP_PACKET;
	long long value = 0;
	double sent_at = 0.0;
	struct iovec iov[MAX_RUN];

	Py_BEGIN_ALLOW_THREADS
	for (;;) {
		ssize_t n = recv(sock, in, (size_t)pkt.len, 0);

		if (n < 0) {
			stop = STOP_RECV;
			value = errno;
			break;
		}
		if (n != 4 || in[0] != 0 || in[1] != TFTP_ACK ||
		    ((unsigned)in[2] << 8 | in[3]) != (unsigned)(sent & 0xFFFF) || sent > last_full) {
			value = n; /* not the ACK of the block just sent, or the last block's ACK */
			break;
		}
		long long i = sent + 1 - ahead;
		if (i < 0 || i >= held) {
			long long count = nblocks - sent < slots ? nblocks - sent : slots;
			long long offset = sent * (long long)blksize;
			long long want = size - offset;

			int err;

			if (want > count * (long long)blksize)
				want = count * (long long)blksize;
			if (read_run(rows_at, rows, packets, step, blksize, count, offset, want, iov,
				     &err) < want) {
				stop = STOP_READ;
				value = err;
				held = 0;
				break;
			}
			for (long long k = 0; k < count; k++) {
				unsigned char *h = packets + k * step;
				long long block = sent + 1 + k;

				h[0] = 0;
				h[1] = TFTP_DATA;
				h[2] = (unsigned char)(block >> 8);
				h[3] = (unsigned char)block;
			}
			held = count;
			ahead = sent + 1;
			i = 0;
		}
		size_t length = 4 + (size_t)(sent < last_full ? blksize : last_length);
		if (send(sock, packets + i * step, length, 0) < 0) {
			stop = STOP_SEND;
			value = errno;
			break;
		}
		sent += 1;
		sent_at = monotonic_now();
	}
	Py_END_ALLOW_THREADS

	PyBuffer_Release(&table);
	PyBuffer_Release(&buf);
	PyBuffer_Release(&pkt);
	return Py_BuildValue("iLLLLd", stop, value, sent, ahead, held, sent_at);
}

static PyMethodDef methods[] = {
	{"run", run, METH_VARARGS, run_doc},
	{NULL, NULL, 0, NULL},
};

static int exec_module(PyObject *module)
{
	if (PyModule_AddIntConstant(module, "STOP_PACKET", STOP_PACKET) < 0 ||
	    PyModule_AddIntConstant(module, "STOP_RECV", STOP_RECV) < 0 ||
	    PyModule_AddIntConstant(module, "STOP_SEND", STOP_SEND) < 0 ||
	    PyModule_AddIntConstant(module, "STOP_READ", STOP_READ) < 0 ||
	    PyModule_AddIntConstant(module, "MAX_RUN", MAX_RUN) < 0)
		return -1;
	return 0;
}

static PyModuleDef_Slot slots[] = {
	{Py_mod_exec, exec_module},
	{0, NULL},
};

static struct PyModuleDef module_def = {
	PyModuleDef_HEAD_INIT,
	.m_name = "overrided.tftp._lockstep",
	.m_doc = "The lockstep inner loop of a TFTP read transfer, without the interpreter.",
	.m_size = 0,
	.m_methods = methods,
	.m_slots = slots,
};

PyMODINIT_FUNC PyInit__lockstep(void)
{
	return PyModuleDef_Init(&module_def);
}
