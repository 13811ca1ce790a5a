// Images in the browser: base64 PNGs from the API and uploaded files as bitmaps and pixels.

/** base64 PNG -> ImageBitmap (no fetch of a data: URL, which the page's CSP forbids). */
export function bitmapOfBase64(b64, type = "image/png") {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  return createImageBitmap(new Blob([bytes], { type }));
}

/** An uploaded file as a bitmap (EXIF orientation applied, as the server does), or null when
 * the browser cannot decode it (TIFF in Chromium): the map is then drawn on gray. */
export async function bitmapOfFile(file) {
  try {
    return await createImageBitmap(file, { imageOrientation: "from-image" });
  } catch {
    return null;
  }
}

export function canvasOf(width, height) {
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  return canvas;
}

/** The pixels of a bitmap drawn at width x height. */
export function pixelsOf(bitmap, width, height) {
  const ctx = canvasOf(width, height).getContext("2d", { willReadFrequently: true });
  ctx.drawImage(bitmap, 0, 0, width, height);
  return ctx.getImageData(0, 0, width, height);
}

/** A canvas holding an ImageData. */
export function canvasOfPixels(pixels) {
  const canvas = canvasOf(pixels.width, pixels.height);
  canvas.getContext("2d").putImageData(pixels, 0, 0);
  return canvas;
}

/** The outline of a 0/255 mask (ImageData) as a canvas: a ring `width` px wide just outside the
 * mask, white; null when the mask is empty. */
export function outlineOf(mask, width) {
  const alpha = new ImageData(mask.width, mask.height);
  let any = false;
  for (let i = 0; i < mask.data.length; i += 4) {
    const on = mask.data[i] > 127;
    any ||= on;
    alpha.data.set([255, 255, 255, on ? 255 : 0], i);
  }
  if (!any) return null;
  const shape = canvasOfPixels(alpha);
  const ring = canvasOf(mask.width, mask.height);
  const ctx = ring.getContext("2d");
  for (let dx = -width; dx <= width; dx++) {
    for (let dy = -width; dy <= width; dy++) {
      if (dx * dx + dy * dy <= width * width) ctx.drawImage(shape, dx, dy);
    }
  }
  ctx.globalCompositeOperation = "destination-out";
  ctx.drawImage(shape, 0, 0);
  return ring;
}
