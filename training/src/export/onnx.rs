//! A small, dependency-light ONNX writer.
//!
//! The ONNX protobuf messages a model writer needs are declared here by hand as `prost::Message`
//! structs, with the field numbers of the official `onnx/onnx.proto` (no `protoc`, no build
//! script). Only the subset used to *write* dense-tensor models is declared; fields outside it
//! (sparse tensors, training info, functions, ...) are skipped as unknown fields when decoding.
//!
//! `onnx.proto` is proto2, so presence matters for a few scalar fields: the single-value fields of
//! [`AttributeProto`] (`f`, `i`, `s`, `t`, `g`) are `Option`s so that a legitimate zero (for
//! example `LeakyRelu` `alpha = 0` or `keepdims = 0`) is still written. Repeated scalars that
//! proto2 declares unpacked (`AttributeProto.floats/ints`, `TensorProto.dims`) are written
//! unpacked, those declared `[packed = true]` packed, exactly as the reference protobuf runtime
//! would.
//!
//! On top of the messages, [`GraphBuilder`] assembles a graph (inputs and outputs with fixed or
//! symbolic dimensions, f32/i64 initializers, nodes with attributes), checks that every node
//! input is defined before use and every value is defined once, and [`model`] wraps the graph
//! into a [`ModelProto`] with IR version [`IR_VERSION`] and the default-domain opset
//! [`OPSET_VERSION`]. Encoding is deterministic: the same graph always gives the same bytes.
//!
//! Above 600 lines as one cohesive thing: the message declarations mirror one `.proto` file and
//! the builder is their only writer; about a third is their tests.

use prost::Message;
use std::collections::BTreeSet;

/// ONNX IR version written by this module (IR 8, ONNX 1.10+).
pub const IR_VERSION: i64 = 8;
/// Version of the default (`ai.onnx`) operator set imported by written models.
pub const OPSET_VERSION: i64 = 17;

/// Errors building, encoding or decoding an ONNX model.
#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    #[error("ONNX value name {0:?} is defined twice in the graph")]
    DuplicateValue(String),
    #[error("ONNX value name must not be empty")]
    EmptyName,
    #[error("tensor {name:?}: dims {dims:?} hold {expected} elements but {actual} were given")]
    ShapeMismatch {
        name: String,
        dims: Vec<i64>,
        expected: usize,
        actual: usize,
    },
    #[error("tensor {name:?}: dimension {dim} is negative")]
    NegativeDim { name: String, dim: i64 },
    #[error("node {node:?} ({op_type}) reads {input:?}, which is not a graph input, an initializer or the output of an earlier node")]
    UndefinedInput {
        node: String,
        op_type: String,
        input: String,
    },
    #[error("graph output {0:?} is never produced")]
    UndefinedOutput(String),
    #[error("node {node:?} ({op_type}) has no output")]
    NoOutput { node: String, op_type: String },
    #[error("cannot decode ONNX model: {0}")]
    Decode(#[from] prost::DecodeError),
}

/// `TensorProto.DataType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum DataType {
    Undefined = 0,
    Float = 1,
    Uint8 = 2,
    Int8 = 3,
    Uint16 = 4,
    Int16 = 5,
    Int32 = 6,
    Int64 = 7,
    String = 8,
    Bool = 9,
    Float16 = 10,
    Double = 11,
    Uint32 = 12,
    Uint64 = 13,
    Complex64 = 14,
    Complex128 = 15,
    Bfloat16 = 16,
}

/// `AttributeProto.AttributeType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum AttributeType {
    Undefined = 0,
    Float = 1,
    Int = 2,
    String = 3,
    Tensor = 4,
    Graph = 5,
    Floats = 6,
    Ints = 7,
    Strings = 8,
    Tensors = 9,
    Graphs = 10,
    SparseTensor = 11,
    SparseTensors = 12,
    TypeProto = 13,
    TypeProtos = 14,
}

/// `ModelProto`: the top-level container.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ModelProto {
    #[prost(int64, tag = "1")]
    pub ir_version: i64,
    #[prost(message, repeated, tag = "8")]
    pub opset_import: Vec<OperatorSetIdProto>,
    #[prost(string, tag = "2")]
    pub producer_name: String,
    #[prost(string, tag = "3")]
    pub producer_version: String,
    #[prost(string, tag = "4")]
    pub domain: String,
    #[prost(int64, tag = "5")]
    pub model_version: i64,
    #[prost(string, tag = "6")]
    pub doc_string: String,
    #[prost(message, optional, tag = "7")]
    pub graph: Option<GraphProto>,
    #[prost(message, repeated, tag = "14")]
    pub metadata_props: Vec<StringStringEntryProto>,
}

/// `OperatorSetIdProto`: an imported operator set (empty domain = `ai.onnx`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct OperatorSetIdProto {
    #[prost(string, tag = "1")]
    pub domain: String,
    #[prost(int64, tag = "2")]
    pub version: i64,
}

/// `StringStringEntryProto`: a key/value pair (metadata, external data locations).
#[derive(Clone, PartialEq, prost::Message)]
pub struct StringStringEntryProto {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `GraphProto`: nodes (topologically sorted), initializers, inputs and outputs.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GraphProto {
    #[prost(message, repeated, tag = "1")]
    pub node: Vec<NodeProto>,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(message, repeated, tag = "5")]
    pub initializer: Vec<TensorProto>,
    #[prost(string, tag = "10")]
    pub doc_string: String,
    #[prost(message, repeated, tag = "11")]
    pub input: Vec<ValueInfoProto>,
    #[prost(message, repeated, tag = "12")]
    pub output: Vec<ValueInfoProto>,
    #[prost(message, repeated, tag = "13")]
    pub value_info: Vec<ValueInfoProto>,
}

/// `NodeProto`: one operator application.
#[derive(Clone, PartialEq, prost::Message)]
pub struct NodeProto {
    #[prost(string, repeated, tag = "1")]
    pub input: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    pub output: Vec<String>,
    #[prost(string, tag = "3")]
    pub name: String,
    #[prost(string, tag = "4")]
    pub op_type: String,
    #[prost(string, tag = "7")]
    pub domain: String,
    #[prost(message, repeated, tag = "5")]
    pub attribute: Vec<AttributeProto>,
    #[prost(string, tag = "6")]
    pub doc_string: String,
}

/// `AttributeProto`: a named node attribute; `type` says which value field is in use.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AttributeProto {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "21")]
    pub ref_attr_name: String,
    #[prost(string, tag = "13")]
    pub doc_string: String,
    #[prost(enumeration = "AttributeType", tag = "20")]
    pub r#type: i32,
    #[prost(float, optional, tag = "2")]
    pub f: Option<f32>,
    #[prost(int64, optional, tag = "3")]
    pub i: Option<i64>,
    #[prost(bytes = "vec", optional, tag = "4")]
    pub s: Option<Vec<u8>>,
    #[prost(message, optional, tag = "5")]
    pub t: Option<TensorProto>,
    #[prost(message, optional, tag = "6")]
    pub g: Option<GraphProto>,
    #[prost(float, repeated, packed = "false", tag = "7")]
    pub floats: Vec<f32>,
    #[prost(int64, repeated, packed = "false", tag = "8")]
    pub ints: Vec<i64>,
    #[prost(bytes = "vec", repeated, tag = "9")]
    pub strings: Vec<Vec<u8>>,
    #[prost(message, repeated, tag = "10")]
    pub tensors: Vec<TensorProto>,
    #[prost(message, repeated, tag = "11")]
    pub graphs: Vec<GraphProto>,
}

/// `TensorProto`: a dense tensor value (row-major); numeric data is written to `raw_data`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorProto {
    #[prost(int64, repeated, packed = "false", tag = "1")]
    pub dims: Vec<i64>,
    #[prost(int32, tag = "2")]
    pub data_type: i32,
    #[prost(float, repeated, tag = "4")]
    pub float_data: Vec<f32>,
    #[prost(int32, repeated, tag = "5")]
    pub int32_data: Vec<i32>,
    #[prost(bytes = "vec", repeated, tag = "6")]
    pub string_data: Vec<Vec<u8>>,
    #[prost(int64, repeated, tag = "7")]
    pub int64_data: Vec<i64>,
    #[prost(string, tag = "8")]
    pub name: String,
    #[prost(string, tag = "12")]
    pub doc_string: String,
    #[prost(bytes = "vec", tag = "9")]
    pub raw_data: Vec<u8>,
    #[prost(double, repeated, tag = "10")]
    pub double_data: Vec<f64>,
    #[prost(uint64, repeated, tag = "11")]
    pub uint64_data: Vec<u64>,
}

/// `ValueInfoProto`: name and type of a graph input, output or intermediate value.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ValueInfoProto {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, optional, tag = "2")]
    pub r#type: Option<TypeProto>,
    #[prost(string, tag = "3")]
    pub doc_string: String,
}

/// `TypeProto`; only the tensor variant of its `value` oneof is declared.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TypeProto {
    #[prost(oneof = "type_proto::Value", tags = "1")]
    pub value: Option<type_proto::Value>,
    #[prost(string, tag = "6")]
    pub denotation: String,
}

/// Nested messages of [`TypeProto`].
pub mod type_proto {
    /// `TypeProto.Tensor`: element type and (optional) shape.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Tensor {
        #[prost(int32, tag = "1")]
        pub elem_type: i32,
        #[prost(message, optional, tag = "2")]
        pub shape: Option<super::TensorShapeProto>,
    }

    /// `TypeProto.value`.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Value {
        #[prost(message, tag = "1")]
        TensorType(Tensor),
    }
}

/// `TensorShapeProto`: one entry per axis.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorShapeProto {
    #[prost(message, repeated, tag = "1")]
    pub dim: Vec<tensor_shape_proto::Dimension>,
}

/// Nested messages of [`TensorShapeProto`].
pub mod tensor_shape_proto {
    /// `TensorShapeProto.Dimension`: a fixed size or a symbolic name.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Dimension {
        #[prost(oneof = "dimension::Value", tags = "1, 2")]
        pub value: Option<dimension::Value>,
        #[prost(string, tag = "3")]
        pub denotation: String,
    }

    /// Nested types of [`Dimension`].
    pub mod dimension {
        /// `TensorShapeProto.Dimension.value`.
        #[derive(Clone, PartialEq, prost::Oneof)]
        pub enum Value {
            #[prost(int64, tag = "1")]
            DimValue(i64),
            #[prost(string, tag = "2")]
            DimParam(String),
        }
    }
}

/// One axis of a graph input or output: a fixed size or a symbolic (dynamic) one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dim {
    /// A fixed size.
    Fixed(i64),
    /// A dynamic axis named by `dim_param`; axes sharing a name must have equal sizes at run time.
    Param(String),
}

impl Dim {
    /// The contract's image tensor shape: NCDHW with one channel and dynamic batch and spatial axes.
    pub fn ncdhw_dynamic() -> [Dim; 5] {
        [
            Dim::param("batch"),
            Dim::Fixed(1),
            Dim::param("depth"),
            Dim::param("height"),
            Dim::param("width"),
        ]
    }

    /// A dynamic axis named `name`.
    pub fn param(name: &str) -> Self {
        Dim::Param(name.to_owned())
    }

    fn to_proto(&self) -> tensor_shape_proto::Dimension {
        use tensor_shape_proto::dimension::Value;
        tensor_shape_proto::Dimension {
            value: Some(match self {
                Dim::Fixed(v) => Value::DimValue(*v),
                Dim::Param(p) => Value::DimParam(p.clone()),
            }),
            denotation: String::new(),
        }
    }
}

/// A `ValueInfoProto` for a tensor of `elem_type` with the given axes.
pub fn tensor_value_info(name: &str, elem_type: DataType, dims: &[Dim]) -> ValueInfoProto {
    ValueInfoProto {
        name: name.to_owned(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: elem_type as i32,
                shape: Some(TensorShapeProto {
                    dim: dims.iter().map(Dim::to_proto).collect(),
                }),
            })),
            denotation: String::new(),
        }),
        doc_string: String::new(),
    }
}

fn element_count(name: &str, dims: &[i64]) -> Result<usize, OnnxError> {
    dims.iter().try_fold(1usize, |acc, &d| {
        usize::try_from(d)
            .map(|d| acc.saturating_mul(d))
            .map_err(|_| OnnxError::NegativeDim {
                name: name.to_owned(),
                dim: d,
            })
    })
}

fn check_len(name: &str, dims: &[i64], actual: usize) -> Result<(), OnnxError> {
    let expected = element_count(name, dims)?;
    if expected != actual {
        return Err(OnnxError::ShapeMismatch {
            name: name.to_owned(),
            dims: dims.to_vec(),
            expected,
            actual,
        });
    }
    Ok(())
}

/// A float32 tensor (row-major `data`, little-endian `raw_data`).
pub fn tensor_f32(name: &str, dims: &[i64], data: &[f32]) -> Result<TensorProto, OnnxError> {
    check_len(name, dims, data.len())?;
    Ok(TensorProto {
        dims: dims.to_vec(),
        data_type: DataType::Float as i32,
        name: name.to_owned(),
        raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    })
}

/// An int64 tensor (row-major `data`, little-endian `raw_data`).
pub fn tensor_i64(name: &str, dims: &[i64], data: &[i64]) -> Result<TensorProto, OnnxError> {
    check_len(name, dims, data.len())?;
    Ok(TensorProto {
        dims: dims.to_vec(),
        data_type: DataType::Int64 as i32,
        name: name.to_owned(),
        raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    })
}

/// Reads back the values of a float32 tensor (from `raw_data` or `float_data`).
pub fn tensor_f32_values(t: &TensorProto) -> Option<Vec<f32>> {
    if t.data_type != DataType::Float as i32 {
        return None;
    }
    if t.raw_data.is_empty() {
        return Some(t.float_data.clone());
    }
    let chunks = t.raw_data.chunks_exact(4);
    if !chunks.remainder().is_empty() {
        return None;
    }
    chunks
        .map(|c| c.try_into().ok().map(f32::from_le_bytes))
        .collect()
}

/// Reads back the values of an int64 tensor (from `raw_data` or `int64_data`).
pub fn tensor_i64_values(t: &TensorProto) -> Option<Vec<i64>> {
    if t.data_type != DataType::Int64 as i32 {
        return None;
    }
    if t.raw_data.is_empty() {
        return Some(t.int64_data.clone());
    }
    let chunks = t.raw_data.chunks_exact(8);
    if !chunks.remainder().is_empty() {
        return None;
    }
    chunks
        .map(|c| c.try_into().ok().map(i64::from_le_bytes))
        .collect()
}

fn attr(name: &str, ty: AttributeType) -> AttributeProto {
    AttributeProto {
        name: name.to_owned(),
        r#type: ty as i32,
        ..Default::default()
    }
}

/// A `FLOAT` attribute.
pub fn attr_float(name: &str, value: f32) -> AttributeProto {
    AttributeProto {
        f: Some(value),
        ..attr(name, AttributeType::Float)
    }
}

/// An `INT` attribute.
pub fn attr_int(name: &str, value: i64) -> AttributeProto {
    AttributeProto {
        i: Some(value),
        ..attr(name, AttributeType::Int)
    }
}

/// A `STRING` attribute.
pub fn attr_string(name: &str, value: &str) -> AttributeProto {
    AttributeProto {
        s: Some(value.as_bytes().to_vec()),
        ..attr(name, AttributeType::String)
    }
}

/// A `TENSOR` attribute (e.g. `Constant`'s `value`).
pub fn attr_tensor(name: &str, value: TensorProto) -> AttributeProto {
    AttributeProto {
        t: Some(value),
        ..attr(name, AttributeType::Tensor)
    }
}

/// A `FLOATS` attribute.
pub fn attr_floats(name: &str, values: &[f32]) -> AttributeProto {
    AttributeProto {
        floats: values.to_vec(),
        ..attr(name, AttributeType::Floats)
    }
}

/// An `INTS` attribute (kernel_shape, strides, pads, dilations, ...).
pub fn attr_ints(name: &str, values: &[i64]) -> AttributeProto {
    AttributeProto {
        ints: values.to_vec(),
        ..attr(name, AttributeType::Ints)
    }
}

/// A `STRINGS` attribute.
pub fn attr_strings(name: &str, values: &[&str]) -> AttributeProto {
    AttributeProto {
        strings: values.iter().map(|s| s.as_bytes().to_vec()).collect(),
        ..attr(name, AttributeType::Strings)
    }
}

/// Assembles a [`GraphProto`] while checking single assignment and definition before use.
#[derive(Debug, Clone)]
pub struct GraphBuilder {
    graph: GraphProto,
    defined: BTreeSet<String>,
}

impl GraphBuilder {
    /// An empty graph called `name`.
    pub fn new(name: &str) -> Self {
        Self {
            graph: GraphProto {
                name: name.to_owned(),
                ..Default::default()
            },
            defined: BTreeSet::new(),
        }
    }

    /// Sets the graph's human-readable documentation.
    pub fn doc(&mut self, doc: &str) -> &mut Self {
        self.graph.doc_string = doc.to_owned();
        self
    }

    fn define(&mut self, name: &str) -> Result<(), OnnxError> {
        if name.is_empty() {
            return Err(OnnxError::EmptyName);
        }
        if !self.defined.insert(name.to_owned()) {
            return Err(OnnxError::DuplicateValue(name.to_owned()));
        }
        Ok(())
    }

    /// Declares a graph input tensor.
    pub fn input(
        &mut self,
        name: &str,
        elem_type: DataType,
        dims: &[Dim],
    ) -> Result<&mut Self, OnnxError> {
        self.define(name)?;
        self.graph
            .input
            .push(tensor_value_info(name, elem_type, dims));
        Ok(self)
    }

    /// Declares a graph output tensor; it must be produced by a node (checked in [`Self::build`]).
    pub fn output(&mut self, name: &str, elem_type: DataType, dims: &[Dim]) -> &mut Self {
        self.graph
            .output
            .push(tensor_value_info(name, elem_type, dims));
        self
    }

    /// Adds a prepared tensor as an initializer (a constant, not a graph input; IR >= 4).
    pub fn initializer(&mut self, tensor: TensorProto) -> Result<String, OnnxError> {
        self.define(&tensor.name)?;
        let name = tensor.name.clone();
        self.graph.initializer.push(tensor);
        Ok(name)
    }

    /// Adds a float32 initializer; returns its name for use as a node input.
    pub fn initializer_f32(
        &mut self,
        name: &str,
        dims: &[i64],
        data: &[f32],
    ) -> Result<String, OnnxError> {
        self.initializer(tensor_f32(name, dims, data)?)
    }

    /// Adds an int64 initializer; returns its name for use as a node input.
    pub fn initializer_i64(
        &mut self,
        name: &str,
        dims: &[i64],
        data: &[i64],
    ) -> Result<String, OnnxError> {
        self.initializer(tensor_i64(name, dims, data)?)
    }

    /// Appends a default-domain node. Inputs must already be defined (an empty string marks an
    /// omitted optional input); outputs must be new names.
    pub fn node(
        &mut self,
        name: &str,
        op_type: &str,
        inputs: &[&str],
        outputs: &[&str],
        attributes: Vec<AttributeProto>,
    ) -> Result<&mut Self, OnnxError> {
        if outputs.is_empty() {
            return Err(OnnxError::NoOutput {
                node: name.to_owned(),
                op_type: op_type.to_owned(),
            });
        }
        if let Some(missing) = inputs
            .iter()
            .find(|i| !i.is_empty() && !self.defined.contains(**i))
        {
            return Err(OnnxError::UndefinedInput {
                node: name.to_owned(),
                op_type: op_type.to_owned(),
                input: (*missing).to_owned(),
            });
        }
        // Check every output before defining any, so a rejected node leaves the builder unchanged.
        let mut fresh = BTreeSet::new();
        for o in outputs {
            if o.is_empty() {
                return Err(OnnxError::EmptyName);
            }
            if self.defined.contains(*o) || !fresh.insert(*o) {
                return Err(OnnxError::DuplicateValue((*o).to_owned()));
            }
        }
        self.defined.extend(outputs.iter().map(|o| (*o).to_owned()));
        self.graph.node.push(NodeProto {
            input: inputs.iter().map(|s| (*s).to_owned()).collect(),
            output: outputs.iter().map(|s| (*s).to_owned()).collect(),
            name: name.to_owned(),
            op_type: op_type.to_owned(),
            attribute: attributes,
            ..Default::default()
        });
        Ok(self)
    }

    /// Checks that every declared output is produced and returns the graph.
    pub fn build(self) -> Result<GraphProto, OnnxError> {
        if let Some(o) = self
            .graph
            .output
            .iter()
            .find(|o| !self.defined.contains(&o.name))
        {
            return Err(OnnxError::UndefinedOutput(o.name.clone()));
        }
        Ok(self.graph)
    }
}

/// Wraps `graph` into a model with IR [`IR_VERSION`] importing `ai.onnx` opset [`OPSET_VERSION`].
pub fn model(
    graph: GraphProto,
    producer_name: &str,
    producer_version: &str,
    doc: &str,
) -> ModelProto {
    ModelProto {
        ir_version: IR_VERSION,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: OPSET_VERSION,
        }],
        producer_name: producer_name.to_owned(),
        producer_version: producer_version.to_owned(),
        doc_string: doc.to_owned(),
        graph: Some(graph),
        ..Default::default()
    }
}

/// Serializes a model to ONNX bytes (deterministic).
pub fn encode_model(model: &ModelProto) -> Vec<u8> {
    model.encode_to_vec()
}

/// Parses ONNX bytes.
pub fn decode_model(bytes: &[u8]) -> Result<ModelProto, OnnxError> {
    Ok(ModelProto::decode(bytes)?)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn sample() -> ModelProto {
        let mut g = GraphBuilder::new("g");
        let dims = [
            Dim::param("N"),
            Dim::Fixed(1),
            Dim::param("D"),
            Dim::param("H"),
            Dim::param("W"),
        ];
        g.input("x", DataType::Float, &dims).unwrap();
        let w = g
            .initializer_f32("w", &[1, 1, 1, 1, 3], &[0.25, 0.5, 0.25])
            .unwrap();
        let p = g
            .initializer_i64("pads", &[10], &[0, 0, 0, 0, 1, 0, 0, 0, 0, 1])
            .unwrap();
        g.node(
            "pad",
            "Pad",
            &["x", &p],
            &["xp"],
            vec![attr_string("mode", "edge")],
        )
        .unwrap();
        g.node(
            "conv",
            "Conv",
            &["xp", &w, ""],
            &["y0"],
            vec![attr_ints("kernel_shape", &[1, 1, 3]), attr_int("group", 1)],
        )
        .unwrap();
        g.node(
            "act",
            "LeakyRelu",
            &["y0"],
            &["y"],
            vec![attr_float("alpha", 0.0)],
        )
        .unwrap();
        g.output("y", DataType::Float, &dims);
        model(g.build().unwrap(), "test", "0", "doc")
    }

    #[test]
    fn encode_decode_round_trip() {
        let m = sample();
        let bytes = encode_model(&m);
        let back = decode_model(&bytes).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.ir_version, 8);
        assert_eq!(back.opset_import[0].version, 17);
        // Deterministic.
        assert_eq!(encode_model(&back), bytes);
    }

    #[test]
    fn zero_valued_scalar_attribute_is_present() {
        let bytes = encode_model(&sample());
        let back = decode_model(&bytes).unwrap();
        let g = back.graph.unwrap();
        let alpha = &g.node[2].attribute[0];
        assert_eq!(alpha.r#type, AttributeType::Float as i32);
        assert_eq!(alpha.f, Some(0.0));
        // The raw encoding carries field 2 (f, fixed32): key byte 0x15 followed by four zero bytes.
        let enc = alpha.encode_to_vec();
        assert!(enc.windows(5).any(|w| w == [0x15, 0, 0, 0, 0]));
    }

    #[test]
    fn tensor_values_read_back() {
        let t = tensor_f32("a", &[2, 2], &[1.0, -2.0, 3.5, 0.0]).unwrap();
        assert_eq!(tensor_f32_values(&t).unwrap(), vec![1.0, -2.0, 3.5, 0.0]);
        assert!(tensor_i64_values(&t).is_none());
        let t = tensor_i64("b", &[3], &[-1, 0, i64::MAX]).unwrap();
        assert_eq!(tensor_i64_values(&t).unwrap(), vec![-1, 0, i64::MAX]);
        // A scalar has no dims and one element.
        assert!(tensor_f32("s", &[], &[1.0]).is_ok());
    }

    #[test]
    fn dims_are_written_unpacked_and_raw_data_little_endian() {
        let t = tensor_i64("p", &[2], &[1, 2]).unwrap();
        let enc = t.encode_to_vec();
        // dims = [2] unpacked: key (1 << 3 | 0) = 0x08, value 2.
        assert_eq!(&enc[..2], &[0x08, 0x02]);
        assert_eq!(t.raw_data, [1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn builder_rejects_bad_graphs() {
        let mut g = GraphBuilder::new("g");
        g.input("x", DataType::Float, &[Dim::Fixed(1)]).unwrap();
        assert!(matches!(
            g.input("x", DataType::Float, &[]),
            Err(OnnxError::DuplicateValue(_))
        ));
        assert!(matches!(
            g.initializer_f32("w", &[2, 2], &[1.0]),
            Err(OnnxError::ShapeMismatch { expected: 4, .. })
        ));
        assert!(matches!(
            g.initializer_f32("w", &[-1], &[]),
            Err(OnnxError::NegativeDim { .. })
        ));
        assert!(matches!(
            g.node("n", "Relu", &["nope"], &["y"], vec![]),
            Err(OnnxError::UndefinedInput { .. })
        ));
        assert!(matches!(
            g.node("n", "Relu", &["x"], &["x"], vec![]),
            Err(OnnxError::DuplicateValue(_))
        ));
        g.output("z", DataType::Float, &[]);
        assert!(matches!(g.build(), Err(OnnxError::UndefinedOutput(_))));
    }

    #[test]
    fn decode_rejects_garbage() {
        assert!(decode_model(&[0xff, 0xff, 0xff]).is_err());
    }
}
