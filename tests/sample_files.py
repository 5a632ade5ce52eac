"""Small but real files of the kinds people attach, and the program an attacker would.

Each is built the way its format says (a PNG with checksummed chunks, a PDF
with its cross-reference table, a DOCX as the zip Word writes), so a
sniffer reads them as it would the real thing.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib


def png() -> bytes:
    """A 1x1 opaque white PNG."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)  # 1x1, 8-bit RGB
    pixels = zlib.compress(b"\x00\xff\xff\xff")
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


# A 2x2 blue baseline JPEG, as libjpeg's cjpeg wrote it.
JPEG = bytes.fromhex(
    "ffd8ffe000104a46494600010100000100010000ffdb004300100b0c0e0c0a100e0d0e1211101318281a1816"
    "16183123251d283a333d3c3933383740485c4e404457453738506d51575f626768673e4d71797064785c6567"
    "63ffdb0043011112121815182f1a1a2f63423842636363636363636363636363636363636363636363636363"
    "6363636363636363636363636363636363636363636363636363ffc000110800020002030122000211010311"
    "01ffc4001500010100000000000000000000000000000004ffc4001410010000000000000000000000000000"
    "0000ffc40014010100000000000000000000000000000005ffc4001411010000000000000000000000000000"
    "0000ffda000c03010002110311003f00800383dfffd9"
)


def pdf() -> bytes:
    """A one-page PDF saying "Signed", with a correct cross-reference table."""
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 100] /Contents 4 0 R"
        b" /Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length 36 >>\nstream\nBT /F1 12 Tf 20 50 Td (Signed) Tj ET\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n%s\nendobj\n" % (number, body))
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    for offset in offsets:
        out.write(b"%010d 00000 n \n" % offset)
    out.write(
        b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    )
    return out.getvalue()


def docx() -> bytes:
    """A Word document: the zip with [Content_Types].xml first, as Word writes it."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(
            "[Content_Types].xml",
            '<?xml version="1.0" encoding="UTF-8"?>'
            '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
            '<Default Extension="rels" ContentType="application/'
            'vnd.openxmlformats-package.relationships+xml"/>'
            '<Default Extension="xml" ContentType="application/xml"/>'
            '<Override PartName="/word/document.xml" ContentType="application/'
            'vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"/></Types>',
        )
        z.writestr(
            "_rels/.rels",
            '<?xml version="1.0" encoding="UTF-8"?>'
            '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
            '<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/'
            'relationships/officeDocument" Target="word/document.xml"/></Relationships>',
        )
        z.writestr(
            "word/document.xml",
            '<?xml version="1.0" encoding="UTF-8"?>'
            '<w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main">'
            "<w:body><w:p><w:r><w:t>Signed</w:t></w:r></w:p></w:body></w:document>",
        )
    return buffer.getvalue()


CSV = (
    "date,amount,note\r\n2024-03-01,120.00,Consultation\r\n2024-03-08,80.00,Follow-up – €\r\n"
).encode()
TEXT = b"Notes for Tuesday:\n- bring the signed form\n- ask about the invoice\n"


def pe_executable() -> bytes:
    """The start of a Windows program: the MZ header, the DOS stub, and the PE header."""
    dos = bytearray(64)
    dos[0:2] = b"MZ"
    dos[0x3C:0x40] = struct.pack("<I", 0x80)  # e_lfanew: where the PE header starts
    stub = b"\x0e\x1f\xba\x0e\x00\xb4\x09\xcd\x21\xb8\x01\x4c\xcd\x21"
    stub += b"This program cannot be run in DOS mode.\r\r\n$"
    head = bytes(dos) + stub
    head += b"\x00" * (0x80 - len(head))
    coff = struct.pack("<4sHHIIIHH", b"PE\x00\x00", 0x14C, 1, 0, 0, 0, 0xE0, 0x102)
    return head + coff + b"\x00" * 512
