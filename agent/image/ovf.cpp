#include "agent/image/ovf.hpp"

#include <fmt/format.h>
#include <libxml/parser.h>
#include <libxml/tree.h>

#include <algorithm>
#include <charconv>
#include <cstring>
#include <memory>
#include <mutex>

#include "agent/base/text.hpp"
#include "agent/image/refusal.hpp"

namespace byoi {

using image_refusal::Invalid;
using image_refusal::Unsupported;

namespace {

constexpr std::string_view kOvf1 = "http://schemas.dmtf.org/ovf/envelope/1";
constexpr std::string_view kOvf2 = "http://schemas.dmtf.org/ovf/envelope/2";
constexpr std::string_view kRasd =
    "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData";
constexpr std::string_view kSasd =
    "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_StorageAllocationSettingData";

std::string_view Str(const xmlChar* s) {
  return s == nullptr ? std::string_view() : reinterpret_cast<const char*>(s);
}

// Shown in a detail: printable and short.
std::string Shown(std::string_view s) { return "\"" + PrintableText(s, 128) + "\""; }

struct DocFree {
  void operator()(xmlDoc* d) const { xmlFreeDoc(d); }
};
struct CtxtFree {
  void operator()(xmlParserCtxt* c) const { xmlFreeParserCtxt(c); }
};

// libxml2's handler for errors that have no parser context to go to (its encoding and I/O layers
// print them to stderr by default): the parser's own error, kept in its context, is what we report.
void IgnoreXmlError(void*, const char*, ...) {}

// The SAX handler for <!DOCTYPE>: no DTD is read, so no entity is ever declared or expanded.
void RefuseDoctype(void* ctx, const xmlChar*, const xmlChar*, const xmlChar*) {
  auto* ctxt = static_cast<xmlParserCtxt*>(ctx);
  *static_cast<bool*>(ctxt->_private) = true;
  xmlStopParser(ctxt);
}

class Reader {
 public:
  explicit Reader(std::string_view ns) : ns_(ns) {}

  // An element of the envelope's namespace named `name`.
  bool IsOvf(const xmlNode* n, std::string_view name) const {
    return n->type == XML_ELEMENT_NODE && Str(n->name) == name && n->ns != nullptr &&
           Str(n->ns->href) == ns_;
  }

  // The ovf:`name` attribute (an unqualified one as a fallback: older writers).
  std::optional<std::string> Attr(const xmlNode* n, std::string_view name) const {
    std::string key(name);
    std::string ns(ns_);
    xmlChar* v = xmlGetNsProp(n, reinterpret_cast<const xmlChar*>(key.c_str()),
                              reinterpret_cast<const xmlChar*>(ns.c_str()));
    if (v == nullptr) v = xmlGetNoNsProp(n, reinterpret_cast<const xmlChar*>(key.c_str()));
    if (v == nullptr) return std::nullopt;
    std::string out(Str(v));
    xmlFree(v);
    return out;
  }

  template <typename Fn>
  void ForChildren(const xmlNode* n, std::string_view name, Fn&& fn) const {
    for (const xmlNode* c = n->children; c != nullptr; c = c->next) {
      if (IsOvf(c, name)) fn(c);
    }
  }

  const xmlNode* FirstChild(const xmlNode* n, std::string_view name) const {
    for (const xmlNode* c = n->children; c != nullptr; c = c->next) {
      if (IsOvf(c, name)) return c;
    }
    return nullptr;
  }

  // The first VirtualSystem, depth first through VirtualSystemCollections.
  const xmlNode* FirstSystem(const xmlNode* n) const {
    for (const xmlNode* c = n->children; c != nullptr; c = c->next) {
      if (IsOvf(c, "VirtualSystem")) return c;
      if (IsOvf(c, "VirtualSystemCollection")) {
        if (const xmlNode* s = FirstSystem(c)) return s;
      }
    }
    return nullptr;
  }

 private:
  std::string_view ns_;
};

std::optional<uint64_t> ParseNumber(std::string_view s) {
  s = TrimBlanks(s);
  uint64_t v = 0;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || end != s.data() + s.size() || s.empty()) return std::nullopt;
  return v;
}

// "byte", "byte * 2^N" (DSP0004 programmatic units): the multiplier, or nullopt.
std::optional<uint64_t> ParseUnits(std::string_view s) {
  std::string compact;
  for (char c : s) {
    if (c != ' ' && c != '\t') compact += c;
  }
  if (compact.empty() || compact == "byte") return 1;
  if (compact.rfind("byte*2^", 0) != 0) return std::nullopt;
  std::optional<uint64_t> exp = ParseNumber(std::string_view(compact).substr(7));
  if (!exp || *exp > 62) return std::nullopt;
  return uint64_t{1} << *exp;
}

// The disk id a HostResource names ("ovf:/disk/ID", "ovf://disk/ID", "/disk/ID"), or "".
std::string_view DiskReference(std::string_view v) {
  v = TrimBlanks(v);
  for (std::string_view prefix : {"ovf:/disk/", "ovf://disk/", "/disk/"}) {
    if (v.substr(0, prefix.size()) == prefix) return v.substr(prefix.size());
  }
  return {};
}

// The disks an Item or StorageItem attaches through its rasd:/sasd:HostResource children.
template <typename Fn>
void ForHostResources(const xmlNode* item, Fn&& fn) {
  for (const xmlNode* c = item->children; c != nullptr; c = c->next) {
    if (c->type != XML_ELEMENT_NODE || Str(c->name) != "HostResource" || c->ns == nullptr) {
      continue;
    }
    if (Str(c->ns->href) != kRasd && Str(c->ns->href) != kSasd) continue;
    xmlChar* text = xmlNodeGetContent(c);
    std::string value(Str(text));
    xmlFree(text);
    std::string_view id = DiskReference(value);
    if (!id.empty()) fn(id);
  }
}

Result<OvfDescriptor> Interpret(const xmlNode* root) {
  OvfDescriptor d;
  std::string_view ns = root->ns != nullptr ? Str(root->ns->href) : std::string_view();
  if (Str(root->name) != "Envelope" || (ns != kOvf1 && ns != kOvf2)) {
    return Invalid(fmt::format("the root element is {} in namespace {}, not an OVF Envelope",
                               Shown(Str(root->name)), Shown(ns)));
  }
  d.version = ns == kOvf2 ? 2 : 1;
  Reader r(ns);
  Status error;
  if (const xmlNode* refs = r.FirstChild(root, "References")) {
    r.ForChildren(refs, "File", [&](const xmlNode* n) {
      OvfFile f;
      f.id = r.Attr(n, "id").value_or("");
      f.href = r.Attr(n, "href").value_or("");
      if (auto size = r.Attr(n, "size")) f.size = ParseNumber(*size);
      f.compression = r.Attr(n, "compression").value_or("");
      f.chunked = r.Attr(n, "chunkSize").has_value();
      d.files.push_back(std::move(f));
    });
  }
  for (size_t i = 0; i < d.files.size(); ++i) {
    if (d.files[i].id.empty() || d.files[i].href.empty()) {
      return Invalid(fmt::format("References: file {} has no ovf:id or no ovf:href", i + 1));
    }
    for (size_t j = 0; j < i; ++j) {
      if (d.files[j].id == d.files[i].id) {
        return Invalid("References: two files have the id " + Shown(d.files[i].id));
      }
    }
  }
  auto file_index = [&](std::string_view id) -> std::optional<size_t> {
    for (size_t i = 0; i < d.files.size(); ++i) {
      if (d.files[i].id == id) return i;
    }
    return std::nullopt;
  };
  if (const xmlNode* disks = r.FirstChild(root, "DiskSection")) {
    r.ForChildren(disks, "Disk", [&](const xmlNode* n) {
      OvfDisk disk;
      disk.id = r.Attr(n, "diskId").value_or("");
      disk.file_ref = r.Attr(n, "fileRef").value_or("");
      disk.format = r.Attr(n, "format").value_or("");
      std::optional<uint64_t> count = ParseNumber(r.Attr(n, "capacity").value_or(""));
      std::optional<uint64_t> unit = ParseUnits(r.Attr(n, "capacityAllocationUnits").value_or(""));
      if (count && unit && *count <= UINT64_MAX / *unit) disk.capacity = *count * *unit;
      d.disks.push_back(std::move(disk));
    });
  }
  for (size_t i = 0; i < d.disks.size(); ++i) {
    const OvfDisk& disk = d.disks[i];
    if (disk.id.empty())
      return Invalid(fmt::format("DiskSection: disk {} has no ovf:diskId", i + 1));
    for (size_t j = 0; j < i; ++j) {
      if (d.disks[j].id == disk.id)
        return Invalid("DiskSection: two disks have the id " + Shown(disk.id));
    }
    if (!disk.file_ref.empty() && !file_index(disk.file_ref)) {
      return Invalid(
          fmt::format("DiskSection: disk {} names file {}, which References does not list",
                      Shown(disk.id), Shown(disk.file_ref)));
    }
  }

  const xmlNode* system = r.FirstSystem(root);
  if (system == nullptr) return Invalid("the descriptor holds no VirtualSystem");
  d.system = r.Attr(system, "id").value_or("");
  if (const xmlNode* hw = r.FirstChild(system, "VirtualHardwareSection")) {
    for (const xmlNode* item = hw->children; item != nullptr; item = item->next) {
      if (!r.IsOvf(item, "Item") && !r.IsOvf(item, "StorageItem")) continue;
      ForHostResources(item, [&](std::string_view id) {
        if (!error.ok()) return;
        for (size_t i = 0; i < d.disks.size(); ++i) {
          if (d.disks[i].id != id) continue;
          if (std::find(d.attached.begin(), d.attached.end(), i) == d.attached.end()) {
            d.attached.push_back(i);
          }
          return;
        }
        error = Invalid(fmt::format(
            "VirtualSystem {}: a HostResource names disk {}, which the DiskSection does not list",
            Shown(d.system), Shown(id)));
      });
      if (!error.ok()) return error;
    }
  }
  const size_t* chosen = nullptr;
  for (const size_t& i : d.attached) {
    if (!d.disks[i].file_ref.empty()) {
      chosen = &i;
      break;
    }
  }
  if (chosen == nullptr) {
    return Unsupported(
        fmt::format("VirtualSystem {} attaches no disk with a file", Shown(d.system)));
  }
  d.install = *chosen;
  d.install_file = *file_index(d.disks[d.install].file_ref);
  const OvfFile& f = d.files[d.install_file];
  const std::string which =
      fmt::format("disk {} (file {})", Shown(d.disks[d.install].id), Shown(f.href));
  if (!f.compression.empty() && f.compression != "identity") {
    return Unsupported(
        fmt::format("{} is stored with ovf:compression {}", which, Shown(f.compression)));
  }
  if (f.chunked) return Unsupported(which + " is split in chunks (ovf:chunkSize)");
  if (f.href.find("://") != std::string::npos || f.href.front() == '/' ||
      f.href.rfind("file:", 0) == 0) {
    return Unsupported(which + " is outside the package");
  }
  return d;
}

}  // namespace

Result<OvfDescriptor> ParseOvf(std::string_view xml) {
  if (xml.size() > kMaxOvfBytes) {
    return Invalid(
        fmt::format("the descriptor has {} bytes, more than {}", xml.size(), kMaxOvfBytes));
  }
  static std::once_flag init;
  std::call_once(init, [] { xmlInitParser(); });
  xmlSetGenericErrorFunc(nullptr, IgnoreXmlError);  // this thread's: libxml2 keeps it per thread
  std::unique_ptr<xmlParserCtxt, CtxtFree> ctxt(xmlNewParserCtxt());
  if (ctxt == nullptr) return Status::Error(Code::kInternal, "libxml2: cannot make a parser");
  bool doctype = false;
  ctxt->_private = &doctype;
  ctxt->sax->internalSubset = RefuseDoctype;
  // No XML_PARSE_NOENT (entities are never substituted), no DTD loading or attribute defaults,
  // no XInclude, no XML_PARSE_HUGE; NONET: nothing is ever fetched; errors are returned, not
  // printed.
  const int options = XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING;
  std::unique_ptr<xmlDoc, DocFree> doc(xmlCtxtReadMemory(
      ctxt.get(), xml.data(), static_cast<int>(xml.size()), "descriptor.ovf", nullptr, options));
  if (doctype) return Invalid("the descriptor has a DTD (<!DOCTYPE>), which is not allowed");
  if (doc == nullptr || !ctxt->wellFormed) {
    const xmlError* e = xmlCtxtGetLastError(ctxt.get());
    std::string why = e != nullptr && e->message != nullptr
                          ? fmt::format("line {}: {}", e->line, TrimBlanks(e->message))
                          : "unknown error";
    std::replace(why.begin(), why.end(), '\n', ' ');
    return Invalid("the descriptor is not well-formed XML: " + PrintableText(why, 256));
  }
  const xmlNode* root = xmlDocGetRootElement(doc.get());
  if (root == nullptr) return Invalid("the descriptor has no root element");
  return Interpret(root);
}

}  // namespace byoi
