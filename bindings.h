/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Kernel headers the driver's module-local bindgen run sees (see Kbuild). Everything the Rust
 * code calls in C goes through the bindings generated from this file, and only ffi.rs uses them.
 */
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/poll.h>
#include <linux/scatterlist.h>
#include <linux/spinlock.h>
#include <linux/virtio.h>
#include <linux/virtio_config.h>
#include <linux/workqueue.h>
#include <linux/videodev2.h>
#include <media/media-device.h>
#include <media/v4l2-dev.h>
#include <media/v4l2-device.h>
#include <media/v4l2-event.h>
#include <media/v4l2-fh.h>
#include <media/v4l2-ioctl.h>
#include <media/v4l2-mem2mem.h>

/* Helpers for function-like macros, which bindgen cannot wrap (bindings_helpers.c). */
unsigned long vmrs_spin_lock_irqsave(spinlock_t *lock);
void vmrs_spin_unlock_irqrestore(spinlock_t *lock, unsigned long flags);
void vmrs_spin_lock_init(spinlock_t *lock, const char *name, struct lock_class_key *key);
void vmrs_dev_warn_ratelimited(struct device *dev, const void *fmt_args);
void vmrs_dev_info(struct device *dev, const void *fmt_args);
void vmrs_dev_err(struct device *dev, const void *fmt_args);
void vmrs_init_work(struct work_struct *work, work_func_t func);
bool vmrs_queue_bh_work(struct work_struct *work);
int vmrs_wait_event_interruptible(struct wait_queue_head *wq, bool (*cond)(const void *), const void *data);
long vmrs_pin_user_pages(unsigned long start, int nr_pages, bool write, struct page **pages);
u64 vmrs_page_to_phys(struct page *page);
extern const struct virtio_device_id vmrs_id_table[];
