/* tests/fuzz/fuzz_sasl.c: libFuzzer target for sessiond/sasl_mech.c, what a
 * network controls in SASL: AUTHENTICATE parameters (reassembly, base64)
 * and SCRAM server messages (server-first, server-final).
 *
 * The input is split on '\n': every piece is fed to sasl_in_feed() as one
 * AUTHENTICATE parameter, and every complete message is then offered to a
 * SCRAM client as its server-first message (with a fixed client nonce the
 * input may or may not extend) and, when that gives a client-final, its
 * successor as the server-final. Contracts checked with abort(): results
 * within their bounds, a reassembly buffer that never exceeds its size. */
#define _GNU_SOURCE /* memmem */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "sessiond/sasl_mech.h"

#define CHECK(x) do { if (!(x)) abort(); } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct sasl_inbuf in;
	struct sasl_scram sc;
	unsigned char msg[SASL_MSG_MAX + 1];
	char param[2 * SASL_CHUNK], out[SASL_MSG_MAX];
	size_t off = 0, len;
	int step = 0;

	in.len = 0;
	memset(&sc, 0, sizeof(sc));
	while (off < size) {
		const uint8_t *nl = memchr(data + off, '\n', size - off);
		size_t n = nl ? (size_t)(nl - (data + off)) : size - off;
		size_t c = n < sizeof(param) - 1 ? n : sizeof(param) - 1;
		memcpy(param, data + off, c);
		param[c] = '\0';
		off += n + (nl ? 1 : 0);
		int rc = sasl_in_feed(&in, param, msg, &len);
		CHECK(in.len <= SASL_B64_MAX);
		CHECK(rc == 0 || rc == 1 || rc == -EINVAL || rc == -EMSGSIZE);
		if (rc != 1)
			continue;
		CHECK(len <= SASL_MSG_MAX);
		msg[len] = '\0';
		if (step == 0) {
			CHECK(sasl_scram_first(&sc, "fuzz,user=", "cnonce", out, sizeof(out)) > 0);
			/* bound the PBKDF2 work of one input (the parser's own
			 * bound, 100,000, costs some 25 ms per run) */
			const char *i = memmem(msg, len, "i=", 2);
			if (i && atol(i + 2) > 5000)
				continue;
			rc = sasl_scram_final(&sc, (const char *)msg, len, "pw", out, sizeof(out));
			CHECK(rc < 0 || (size_t)rc < sizeof(out));
			if (rc > 0)
				step = 1;
		} else {
			rc = sasl_scram_verify(&sc, (const char *)msg, len);
			CHECK(rc == 0 || rc == -EACCES || rc == -EPROTO);
			step = 0;
		}
	}
	sasl_scram_clear(&sc);
	return 0;
}
