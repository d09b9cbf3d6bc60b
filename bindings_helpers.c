// SPDX-License-Identifier: GPL-2.0
/*
 * C helpers for the function-like macros the Rust driver needs (static inline functions are
 * wrapped by bindgen itself, into bindings_static.c), and the virtio ID table, which must be a
 * C object for MODULE_DEVICE_TABLE()/modpost to emit the `virtio:d00000030v*` modalias.
 */
#include "bindings.h"

#ifndef VIRTIO_ID_MEDIA
#define VIRTIO_ID_MEDIA 48
#endif

const struct virtio_device_id vmrs_id_table[] = {
	{ VIRTIO_ID_MEDIA, VIRTIO_DEV_ANY_ID },
	{ 0 },
};
MODULE_DEVICE_TABLE(virtio, vmrs_id_table);

unsigned long vmrs_spin_lock_irqsave(spinlock_t *lock)
{
	unsigned long flags;

	spin_lock_irqsave(lock, flags);
	return flags;
}

void vmrs_spin_unlock_irqrestore(spinlock_t *lock, unsigned long flags)
{
	spin_unlock_irqrestore(lock, flags);
}

void vmrs_spin_lock_init(spinlock_t *lock, const char *name, struct lock_class_key *key)
{
#ifdef CONFIG_DEBUG_SPINLOCK
	__raw_spin_lock_init(spinlock_check(lock), name, key, LD_WAIT_CONFIG);
#else
	spin_lock_init(lock);
#endif
}

/* `fmt_args` is a Rust `core::fmt::Arguments`, printed with the kernel's %pA. */
void vmrs_dev_warn_ratelimited(struct device *dev, const void *fmt_args)
{
	dev_warn_ratelimited(dev, "%pA\n", fmt_args);
}

void vmrs_dev_info(struct device *dev, const void *fmt_args)
{
	dev_info(dev, "%pA\n", fmt_args);
}

void vmrs_dev_err(struct device *dev, const void *fmt_args)
{
	dev_err(dev, "%pA\n", fmt_args);
}

void vmrs_init_work(struct work_struct *work, work_func_t func)
{
	INIT_WORK(work, func);
}

/* The eventq bottom half runs on the BH workqueue (Documentation/design.md explains why). */
bool vmrs_queue_bh_work(struct work_struct *work)
{
	return queue_work(system_bh_wq, work);
}

/* wait_event_interruptible() with the condition as a callback (Rust closures cannot be macro
 * arguments). Returns 0 or -ERESTARTSYS. */
int vmrs_wait_event_interruptible(struct wait_queue_head *wq, bool (*cond)(const void *),
				  const void *data)
{
	return wait_event_interruptible(*wq, cond(data));
}

/*
 * USERPTR planes and ext-control payloads: long-term pins (the device keeps a queued buffer
 * for as long as it likes), writable when the device writes into them.
 */
long vmrs_pin_user_pages(unsigned long start, int nr_pages, bool write, struct page **pages)
{
	return pin_user_pages_fast(start, nr_pages, FOLL_LONGTERM | (write ? FOLL_WRITE : 0), pages);
}

/* The guest-physical address the device uses (virtio without VIRTIO_F_ACCESS_PLATFORM). */
u64 vmrs_page_to_phys(struct page *page)
{
	return page_to_phys(page);
}
