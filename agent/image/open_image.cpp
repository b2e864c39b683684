#include "agent/image/open_image.hpp"

#include "agent/base/text.hpp"
#include "agent/image/raw_source.hpp"

namespace byoi {

std::string_view FormatName(ImageFormat f) {
  switch (f) {
    case ImageFormat::kQcow2:
      return "qcow2";
    case ImageFormat::kVmdk:
      return "vmdk";
    case ImageFormat::kOva:
      return "ova";
    default:
      return "raw";
  }
}

ImageFormat SourceFormat(std::span<const uint8_t> image) {
  if (HasQcow2Magic(image)) return ImageFormat::kQcow2;
  if (LooksLikeVmdk(image)) return ImageFormat::kVmdk;
  if (LooksLikeOva(image)) return ImageFormat::kOva;
  return ImageFormat::kRaw;
}

uint64_t OpenedImage::compressed_bytes() const {
  if (qcow2) return qcow2->compressed_bytes;
  if (vmdk) return vmdk->compressed_bytes;
  return 0;
}

Result<OpenedImage> OpenImage(std::span<const uint8_t> image) {
  OpenedImage out;
  out.format = SourceFormat(image);
  switch (out.format) {
    case ImageFormat::kQcow2: {
      BYOI_ASSIGN_OR_RETURN(Qcow2Image q, ReadQcow2(image));
      out.layout = std::move(q.layout);
      out.qcow2 = q.info;
      return out;
    }
    case ImageFormat::kVmdk: {
      BYOI_ASSIGN_OR_RETURN(VmdkImage v, ReadVmdk(image));
      out.layout = std::move(v.layout);
      out.vmdk = std::move(v.info);
      return out;
    }
    case ImageFormat::kOva: {
      BYOI_ASSIGN_OR_RETURN(OvaArchive ova, ReadOva(image));
      Result<VmdkImage> v = ReadVmdk(ova.disk);
      if (!v.ok()) {
        return std::move(v).status().Context(
            "the disk " + PrintableText(ova.info.members[ova.info.disk].name, 256));
      }
      out.layout = std::move(v->layout);
      out.vmdk = std::move(v->info);
      out.ova = std::move(ova.info);
      return out;
    }
    default:
      out.layout = RawLayout(image);
      return out;
  }
}

}  // namespace byoi
