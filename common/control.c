/* common/control.c: see control.h. */
#include "common/control.h"

#include <errno.h>
#include <stdlib.h>

#include "common/frame.h"

int control_send(int sock, enum control_type type, const ProtobufCMessage *msg,
		 const int *fds, size_t nfds, int timeout_ms)
{
	size_t len = protobuf_c_message_get_packed_size(msg);
	uint8_t *buf = malloc(len ? len : 1);
	int r;

	if (buf == NULL)
		return -ENOMEM;
	protobuf_c_message_pack(msg, buf);
	r = frame_send(sock, (uint8_t)type, buf, len, fds, nfds,
			       timeout_ms);
	free(buf);
	return r;
}
