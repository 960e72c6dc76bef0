//! Just enough of the BPF Type Format to find struct member offsets in the kernel's
//! `/sys/kernel/btf/vmlinux`: aya has no CO-RE for Rust programs, so the page-table walker gets
//! `mm_struct.pgd` and `task_struct.mm` from here at start-up (the data plane reads the file
//! once and parses it with `Btf::parse`).

use anyhow::{Context as _, Result, bail};

const MAGIC: u16 = 0xeb9f;

const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// Anonymous structs and unions nest a few deep in the kernel's types.
const MAX_ANONYMOUS_DEPTH: u32 = 16;
/// The most members one lookup visits: the kernel's biggest structs, anonymous parts and all,
/// have a few hundred.
const MAX_MEMBERS_VISITED: u32 = 1 << 16;

/// One type: where its kind-specific data starts in the type section.
#[derive(Clone, Copy)]
struct Type {
    name_off: u32,
    kind: u32,
    kind_flag: bool,
    vlen: u32,
    /// `size` or `type`, depending on the kind.
    size_or_type: u32,
    data: usize,
}

pub struct Btf {
    types: Vec<u8>,
    strings: Vec<u8>,
    /// Index `id - 1`: type ids start at 1 (0 is void).
    index: Vec<Type>,
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

impl Btf {
    pub fn parse(data: &[u8]) -> Result<Self> {
        let magic = data.get(0..2).map(|m| u16::from_le_bytes([m[0], m[1]]));
        if magic != Some(MAGIC) {
            bail!("not little-endian BTF (bad magic)");
        }
        let field = |at| u32_at(data, at).context("truncated BTF header");
        let hdr_len = field(4)? as usize;
        let (type_off, type_len) = (field(8)? as usize, field(12)? as usize);
        let (str_off, str_len) = (field(16)? as usize, field(20)? as usize);
        let section = |off: usize, len: usize| {
            data.get(hdr_len + off..hdr_len + off + len)
                .map(<[u8]>::to_vec)
                .context("BTF section out of bounds")
        };
        let (types, strings) = (section(type_off, type_len)?, section(str_off, str_len)?);
        let index = Self::index(&types)?;
        Ok(Self { types, strings, index })
    }

    fn index(types: &[u8]) -> Result<Vec<Type>> {
        let mut index = Vec::new();
        let mut at = 0;
        while at < types.len() {
            let word = |i: usize| u32_at(types, at + 4 * i).context("truncated BTF type");
            let (name_off, info, size_or_type) = (word(0)?, word(1)?, word(2)?);
            let (kind, vlen) = ((info >> 24) & 0x1f, info & 0xffff);
            let data = at + 12;
            let extra = match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * vlen as usize,
                KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen as usize,
                _ => 0,
            };
            index.push(Type {
                name_off,
                kind,
                kind_flag: info >> 31 == 1,
                vlen,
                size_or_type,
                data,
            });
            at = data + extra;
        }
        Ok(index)
    }

    fn name(&self, offset: u32) -> &str {
        let bytes = self.strings.get(offset as usize..).unwrap_or_default();
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        std::str::from_utf8(&bytes[..end]).unwrap_or_default()
    }

    fn type_by_id(&self, id: u32) -> Option<&Type> {
        self.index.get(id.checked_sub(1)? as usize)
    }

    /// Follows typedefs and qualifiers to the type they name.
    fn resolve(&self, mut id: u32) -> Option<&Type> {
        for _ in 0..32 {
            let t = self.type_by_id(id)?;
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.size_or_type
                }
                _ => return Some(t),
            }
        }
        None
    }

    fn struct_named(&self, name: &str) -> Result<&Type> {
        self.index
            .iter()
            .find(|t| t.kind == KIND_STRUCT && self.name(t.name_off) == name)
            .with_context(|| format!("kernel BTF has no struct {name}"))
    }

    /// The size in bytes of struct `name`.
    pub fn struct_size(&self, name: &str) -> Result<u64> {
        Ok(self.struct_named(name)?.size_or_type.into())
    }

    /// The value of enumerator `name`, in whichever enum has it.
    pub fn enum_value(&self, name: &str) -> Option<u64> {
        self.index.iter().filter(|t| t.kind == KIND_ENUM).find_map(|t| {
            (0..t.vlen as usize).find_map(|i| {
                let at = t.data + 8 * i;
                (self.name(u32_at(&self.types, at)?) == name)
                    .then(|| u32_at(&self.types, at + 4).map(u64::from))
                    .flatten()
            })
        })
    }

    /// Byte offset of `member` in struct `name`, looking through anonymous structs and unions.
    pub fn member_offset(&self, name: &str, member: &str) -> Result<usize> {
        let container = self.struct_named(name)?;
        let mut budget = MAX_MEMBERS_VISITED;
        let bits = self
            .find_member(container, member, (0, 0), &mut budget)
            .with_context(|| format!("kernel BTF: struct {name} has no member {member}"))?;
        if bits % 8 != 0 {
            bail!("kernel BTF: {name}.{member} is a bit-field");
        }
        Ok(bits as usize / 8)
    }

    /// The member's bit offset from the outermost container; `base` is this container's, at
    /// `depth` anonymous members down. Bounded in depth and in members visited (`budget`): a
    /// corrupt file may nest a struct in itself, or fan anonymous members out exponentially.
    fn find_member(
        &self,
        container: &Type,
        member: &str,
        (base, depth): (u32, u32),
        budget: &mut u32,
    ) -> Option<u32> {
        if depth > MAX_ANONYMOUS_DEPTH {
            return None;
        }
        (0..container.vlen as usize).find_map(|i| {
            *budget = budget.checked_sub(1)?;
            let at = container.data + 12 * i;
            let (name_off, type_id, raw) = (
                u32_at(&self.types, at)?,
                u32_at(&self.types, at + 4)?,
                u32_at(&self.types, at + 8)?,
            );
            // With kind_flag the top 8 bits hold a bit-field size.
            let offset =
                base.checked_add(if container.kind_flag { raw & 0xff_ffff } else { raw })?;
            let name = self.name(name_off);
            if name == member {
                return Some(offset);
            }
            let inner = self.resolve(type_id)?;
            let anonymous = name.is_empty() && matches!(inner.kind, KIND_STRUCT | KIND_UNION);
            if anonymous {
                self.find_member(inner, member, (offset, depth + 1), budget)
            } else {
                None
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BTF blob with: 1 `long` (int), 2 `struct inner { long b; long pgd; }`,
    /// 3 `struct outer { long a; struct { ... } (anonymous, at byte 16); }`, 4 `enum pageflags`.
    fn sample() -> Vec<u8> {
        let strings = b"\0long\0b\0pgd\0inner\0a\0outer\0pageflags\0PG_lru\0PG_head\0";
        let name = |s: &str| {
            let needle = format!("\0{s}\0");
            strings.windows(needle.len()).position(|w| w == needle.as_bytes()).unwrap() as u32 + 1
        };
        let mut types = Vec::new();
        let mut put =
            |words: &[u32]| words.iter().for_each(|w| types.extend_from_slice(&w.to_le_bytes()));
        put(&[name("long"), KIND_INT << 24, 8, 64]);
        put(&[name("inner"), KIND_STRUCT << 24 | 2, 16]);
        put(&[name("b"), 1, 0]);
        put(&[name("pgd"), 1, 64]);
        put(&[name("outer"), KIND_STRUCT << 24 | 2, 32]);
        put(&[name("a"), 1, 0]);
        put(&[0, 2, 128]); // anonymous `struct inner` at bit 128
        put(&[name("pageflags"), KIND_ENUM << 24 | 2, 4]);
        put(&[name("PG_lru"), 5]);
        put(&[name("PG_head"), 6]);
        let mut blob = Vec::new();
        blob.extend_from_slice(&MAGIC.to_le_bytes());
        blob.extend_from_slice(&[1, 0]);
        for word in [24, 0, types.len() as u32, types.len() as u32, strings.len() as u32] {
            blob.extend_from_slice(&word.to_le_bytes());
        }
        blob.extend_from_slice(&types);
        blob.extend_from_slice(strings);
        blob
    }

    #[test]
    fn finds_members_inside_anonymous_structs() {
        let btf = Btf::parse(&sample()).unwrap();
        assert_eq!(btf.member_offset("outer", "a").unwrap(), 0);
        assert_eq!(btf.member_offset("outer", "pgd").unwrap(), 16 + 8);
        assert_eq!(btf.member_offset("inner", "pgd").unwrap(), 8);
        let missing = btf.member_offset("outer", "mm").unwrap_err().to_string();
        assert_eq!(missing, "kernel BTF: struct outer has no member mm");
        assert!(btf.member_offset("nothere", "a").is_err());
    }

    #[test]
    fn sizes_and_enumerators() {
        let btf = Btf::parse(&sample()).unwrap();
        assert_eq!(
            (btf.struct_size("inner").unwrap(), btf.struct_size("outer").unwrap()),
            (16, 32)
        );
        assert_eq!(btf.enum_value("PG_head"), Some(6));
        assert_eq!(btf.enum_value("PG_nothing"), None);
    }

    #[test]
    fn rejects_garbage() {
        assert!(Btf::parse(b"not btf at all").is_err());
        let mut truncated = sample();
        truncated.truncate(30);
        assert!(Btf::parse(&truncated).is_err());
    }
}
