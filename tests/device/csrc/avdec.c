// SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause
/*
 * avdec: the smallest C face of libavcodec's H.264 decoder that the test device needs
 * (src/avdec.rs wraps it). C because AVFrame/AVCodecContext fields are read here, against
 * Debian's own headers, instead of mirroring their layouts in Rust.
 *
 * One handle = one H.264 byte-stream parser (av_parser_*) + one decoder context (single
 * threaded, so output order and timing do not depend on the machine). Input arrives in any
 * chunking (V4L2_FMT_FLAG_CONTINUOUS_BYTESTREAM): the parser cuts it into access units,
 * each is sent to the decoder, decoded frames are taken one at a time.
 */
#include <errno.h>
#include <stdint.h>
#include <string.h>

#include <libavcodec/avcodec.h>
#include <libavutil/frame.h>
#include <libavutil/pixfmt.h>

struct avdec {
	AVCodecParserContext *parser;
	AVCodecContext *ctx;
	AVPacket *pkt;
	AVFrame *frame;
	/* A frame taken by avdec_receive and not yet copied out. */
	int have_frame;
};

static int open_parts(struct avdec *d)
{
	const AVCodec *codec = avcodec_find_decoder(AV_CODEC_ID_H264);

	if (!codec)
		return -ENOSYS;
	d->parser = av_parser_init(AV_CODEC_ID_H264);
	d->ctx = avcodec_alloc_context3(codec);
	if (!d->parser || !d->ctx)
		return -ENOMEM;
	d->ctx->thread_count = 1;
	if (avcodec_open2(d->ctx, codec, NULL) < 0)
		return -EINVAL;
	return 0;
}

static void close_parts(struct avdec *d)
{
	if (d->parser)
		av_parser_close(d->parser);
	d->parser = NULL;
	avcodec_free_context(&d->ctx);
}

void avdec_free(struct avdec *d)
{
	if (!d)
		return;
	close_parts(d);
	av_packet_free(&d->pkt);
	av_frame_free(&d->frame);
	av_free(d);
}

struct avdec *avdec_new(void)
{
	struct avdec *d = av_mallocz(sizeof(*d));

	if (!d)
		return NULL;
	d->pkt = av_packet_alloc();
	d->frame = av_frame_alloc();
	if (!d->pkt || !d->frame || open_parts(d) < 0) {
		avdec_free(d);
		return NULL;
	}
	return d;
}

/*
 * Forgets all input and decoding state (a seek, or a restart after a drain): a new parser,
 * the decoder flushed (it keeps the parameter sets it has seen, as a hardware decoder does
 * across V4L2_DEC_CMD_START).
 */
int avdec_reset(struct avdec *d)
{
	av_frame_unref(d->frame);
	d->have_frame = 0;
	avcodec_flush_buffers(d->ctx);
	av_parser_close(d->parser);
	d->parser = av_parser_init(AV_CODEC_ID_H264);
	return d->parser ? 0 : -ENOMEM;
}

static int send(struct avdec *d, AVPacket *pkt)
{
	int ret = avcodec_send_packet(d->ctx, pkt);

	/* Corrupt data is the bitstream's problem, not the session's: the frame is skipped. */
	if (ret == AVERROR_INVALIDDATA)
		return 0;
	return ret == AVERROR(EAGAIN) ? -EAGAIN : (ret < 0 ? -EIO : 0);
}

/*
 * Parses up to `len` bytes of `buf` with timestamp `pts`; returns the bytes consumed (>= 0) or
 * a negative errno. When the parser completes an access unit it is sent to the decoder and
 * `*sent` is set; the caller must then take frames with avdec_receive before parsing on.
 * `buf` NULL / `len` 0 flushes the parser's last access unit.
 */
int avdec_parse(struct avdec *d, const uint8_t *buf, int len, int64_t pts, int *sent)
{
	uint8_t *out = NULL;
	int out_size = 0;
	int used;

	*sent = 0;
	if (!d->parser) /* avdec_reset could not make a new one */
		return -ENOMEM;
	used = av_parser_parse2(d->parser, d->ctx, &out, &out_size, buf, len, pts, pts, 0);
	if (used < 0)
		return -EIO;
	if (out_size > 0) {
		int ret;

		d->pkt->data = out;
		d->pkt->size = out_size;
		d->pkt->pts = d->parser->pts;
		d->pkt->dts = d->parser->dts;
		ret = send(d, d->pkt);
		av_packet_unref(d->pkt);
		if (ret < 0)
			return ret;
		*sent = 1;
	}
	return used;
}

/* End of stream: the decoder gives out every frame it still holds. */
int avdec_drain(struct avdec *d)
{
	int ret = send(d, NULL);

	return ret == -EAGAIN ? 0 : ret;
}

/*
 * Takes the next decoded frame: 1 (a frame: its size and timestamp in *w, *h, *pts), 0 (none
 * now), -EPIPE (drained: nothing more until avdec_reset), -ENOTSUP (not 8-bit 4:2:0), other
 * negative errno on error.
 */
int avdec_receive(struct avdec *d, int *w, int *h, int64_t *pts)
{
	int ret;

	av_frame_unref(d->frame);
	d->have_frame = 0;
	ret = avcodec_receive_frame(d->ctx, d->frame);
	if (ret == AVERROR(EAGAIN))
		return 0;
	if (ret == AVERROR_EOF)
		return -EPIPE;
	if (ret < 0)
		return -EIO;
	if (d->frame->format != AV_PIX_FMT_YUV420P && d->frame->format != AV_PIX_FMT_YUVJ420P)
		return -ENOTSUP;
	if (d->frame->width <= 0 || d->frame->height <= 0 || (d->frame->width & 1) ||
	    (d->frame->height & 1))
		return -ENOTSUP;
	*w = d->frame->width;
	*h = d->frame->height;
	/* AV_NOPTS_VALUE (INT64_MIN) when the parser had no timestamp for this access unit. */
	*pts = d->frame->pts;
	d->have_frame = 1;
	return 1;
}

/*
 * What the decoder knows of the stream now: the level (level_idc: 31 = 3.1, 9 = 1b; 0 if not
 * known yet) and the number of frames it holds back to output them in display order
 * (has_b_frames: the SPS's num_reorder_frames, or what libavcodec has seen).
 */
void avdec_stream_info(struct avdec *d, int *level, int *reorder)
{
	*level = d->ctx->level > 0 ? d->ctx->level : 0;
	*reorder = d->ctx->has_b_frames > 0 ? d->ctx->has_b_frames : 0;
}

/* Copies the frame avdec_receive returned as tightly packed I420 (Y, then U, then V) into
 * `dst` of `cap` bytes: returns the bytes written or -ENOSPC / -ENODATA. */
long avdec_copy_i420(struct avdec *d, uint8_t *dst, size_t cap)
{
	AVFrame *f = d->frame;
	size_t w = f->width, h = f->height;
	size_t need = w * h * 3 / 2;
	int p;

	if (!d->have_frame)
		return -ENODATA;
	if (cap < need)
		return -ENOSPC;
	for (p = 0; p < 3; p++) {
		size_t pw = p ? w / 2 : w, ph = p ? h / 2 : h, y;

		for (y = 0; y < ph; y++) {
			memcpy(dst, f->data[p] + (ptrdiff_t)y * f->linesize[p], pw);
			dst += pw;
		}
	}
	return (long)need;
}
