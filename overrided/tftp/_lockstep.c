/*
 * The lockstep (window 1) inner loop of a TFTP read transfer, run without the interpreter.
 *
 * At window 1 every block costs a round trip: the client's ACK wakes the server, which sends
 * the next block and sleeps again. What the server does between waking and sending is all
 * that its own code adds to the round trip, so this loop does only that: recv the ACK, check
 * that it acknowledges the block just sent, send the next block (read ahead from the file
 * with one preadv per run of blocks, headers written in the gaps between payloads), repeat.
 * Anything else (a timeout, an error, an ERROR packet, any other ACK, the last block's ACK)
 * returns to the Python transfer (overrided/tftp/transfer.py), which owns every decision
 * beyond "the expected ACK came: send the next block". The GIL is released for the whole
 * loop; no Python object is touched inside it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <stdint.h>
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
	STOP_READ = 3,   /* preadv failed (value = errno) or came short of the size (value = 0) */
};

#define MAX_RUN 64 /* blocks read ahead at most (iovecs on the stack) */
#define TFTP_DATA 3
#define TFTP_ACK 4

static double monotonic_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts); /* the clock of Python's time.monotonic() */
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

PyDoc_STRVAR(run_doc,
"run(sock_fd, file_fd, buf, pkt, blksize, nblocks, size, sent, ahead, held)\n"
"    -> (stop, value, sent, ahead, held, sent_at)\n"
"\n"
"Answer ACKs of the block just sent with the next block until something else happens.\n"
"\n"
"Call it only when block ``sent`` (absolute number, 1 .. nblocks - 1) went out and every\n"
"block before it was acknowledged. ``buf`` holds packets of blksize + 4 bytes back to back;\n"
"slots 0 .. held - 1 hold blocks ahead .. ahead + held - 1 ready to send. ``pkt`` receives\n"
"the client's packets. Returns why it stopped (STOP_*), the errno or packet length, the\n"
"updated sent/ahead/held, and the CLOCK_MONOTONIC time of the last send (0.0 if none).");

static PyObject *run(PyObject *self, PyObject *args)
{
	int sock, fd;
	Py_buffer buf, pkt;
	Py_ssize_t blksize;
	long long nblocks, size, sent, ahead, held;

	(void)self;
	if (!PyArg_ParseTuple(args, "iiw*w*nLLLLL", &sock, &fd, &buf, &pkt, &blksize, &nblocks,
			      &size, &sent, &ahead, &held))
		return NULL;

	const Py_ssize_t step = blksize + 4;
	long long slots = blksize > 0 ? buf.len / step : 0;
	if (slots > MAX_RUN)
		slots = MAX_RUN;
	const long long last_full = nblocks - 1; /* blocks before this one are full */
	if (blksize < 8 || slots < 1 || pkt.len < 4 || held > slots || sent < 1 ||
	    sent > last_full || size < last_full * (long long)blksize) {
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

			if (want > count * (long long)blksize)
				want = count * (long long)blksize;
			for (long long k = 0; k < count; k++) {
				iov[k].iov_base = packets + k * step + 4;
				iov[k].iov_len = (size_t)blksize;
			}
			ssize_t got = preadv(fd, iov, (int)count, (off_t)offset);
			if (got < want) {
				stop = STOP_READ;
				value = got < 0 ? errno : 0;
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
